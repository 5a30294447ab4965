/**
 * What the extension does in the application: the command that opens the GPU panel, opening a
 * notebook, the kernel actions the panel offers (with their confirmation), and notifications.
 */

import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { KernelAPI } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { basename } from './format';
import { KernelsModel } from './kernels';
import { INotice } from './notify';
import { KernelAction } from './panel';

/** Opens the GPU panel (the View menu's entry comes from the plugin's schema). */
export const OPEN_PANEL = 'tfgpu:open';

/** Add the command that shows `panel`, and its entry in the command palette. */
export function addOpenPanelCommand(
  app: JupyterFrontEnd,
  panel: Widget,
  palette: ICommandPalette | null
): void {
  app.commands.addCommand(OPEN_PANEL, {
    label: args => (args.isPalette ? 'Show the GPU Panel' : 'GPU Panel'),
    caption: 'GPUs, who holds their memory, and the current notebook’s GPU policy',
    execute: () => app.shell.activateById(panel.id)
  });
  palette?.addItem({ command: OPEN_PANEL, category: 'GPU', args: { isPalette: true } });
}

/** Show the GPU panel. */
export function openPanel(app: JupyterFrontEnd): void {
  void app.commands.execute(OPEN_PANEL);
}

/** Open the notebook at `path` (relative to the server root). */
export function openNotebook(app: JupyterFrontEnd, path: string): void {
  void app.commands.execute('docmanager:open', { path });
}

/** The ids of the kernels of the notebooks open in this lab. */
export function openKernels(tracker: INotebookTracker): string[] {
  const ids: string[] = [];
  tracker.forEach(widget => {
    const id = widget.sessionContext.session?.kernel?.id;
    if (id) {
      ids.push(id);
    }
  });
  return ids;
}

/** Show `notice` as a notification that stays, with buttons to its notebook and the panel. */
export function showNotice(app: JupyterFrontEnd, notice: INotice): void {
  const actions: Notification.IAction[] = [{ label: 'GPU panel', callback: () => openPanel(app) }];
  if (notice.notebook) {
    const path = notice.notebook;
    actions.unshift({ label: 'Open notebook', callback: () => openNotebook(app, path) });
  }
  Notification.emit(notice.message, notice.type, { autoClose: false, actions });
}

/**
 * Interrupt, restart or shut down a kernel of this server (a restart or a shutdown after the
 * user confirms it), then read the kernels again; a failure is shown in a dialog.
 */
export async function runKernelAction(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  kernels: KernelsModel,
  action: KernelAction,
  id: string,
  notebook: string | null
): Promise<void> {
  const { serviceManager } = app;
  const name = basename(notebook) || `kernel ${id.slice(0, 8)}`;
  const verb = action === 'restart' ? 'Restart' : action === 'shutdown' ? 'Shut down' : '';
  if (verb) {
    const answer = await showDialog({
      title: `${verb} the kernel?`,
      body: `${verb} the kernel of ${name}? Its variables will be lost.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: verb })]
    });
    if (!answer.button.accept) {
      return;
    }
  }
  try {
    // An open notebook's own connection follows the restart; other kernels go over REST.
    const open = tracker.find(w => w.sessionContext.session?.kernel?.id === id);
    const connection = open?.sessionContext.session?.kernel;
    if (action === 'shutdown') {
      await serviceManager.kernels.shutdown(id);
    } else if (connection) {
      await connection[action]();
    } else if (action === 'restart') {
      await KernelAPI.restartKernel(id, serviceManager.serverSettings);
    } else {
      await KernelAPI.interruptKernel(id, serviceManager.serverSettings);
    }
  } catch (error) {
    void showErrorMessage(`Could not ${action} the kernel of ${name}`, error as Error);
  }
  await kernels.refresh().catch(() => 0);
}

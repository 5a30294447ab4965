import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { KernelAPI } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { basename } from './format';
import { KernelsModel } from './kernels';
import { GpuNotifier, INotice } from './notify';
import { GpuPanel, KernelAction } from './panel';
import { PolicyModel, policyFields } from './policy';
import schema from './policy.schema.json';
import { requestAPI } from './request';
import { DEFAULTS, ISettings, readSettings, statusChoice } from './settings';
import { GpuStatusItem } from './statusitem';
import { GpuStreamModel } from './stream';
import { addToolbarItem } from './toolbaritem';
import { IApi } from './types';

const PLUGIN_ID = 'jupyter-tfgpu:plugin';
/** Opens the GPU panel (the View menu's entry comes from the plugin's schema). */
const OPEN_PANEL = 'tfgpu:open';

/**
 * The GPU sidebar panel, the status bar item and the notifications, over one set of models.
 * In Notebook 7, which has no status bar, the panel is in the right sidebar and each notebook's
 * toolbar shows its kernel's GPU memory.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'GPU panel, status bar item and notifications for the jupyter-tfgpu server extension.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, IStatusBar, ISettingRegistry, ICommandPalette, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null,
    registry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    labShell: ILabShell | null
  ) => {
    const { serviceManager } = app;
    const serverSettings = serviceManager.serverSettings;
    const api: IApi = {
      request: (endPoint, init) => requestAPI(endPoint, init, serverSettings),
      connect: () => {
        let url = URLExt.join(serverSettings.wsUrl, 'tfgpu', 'api', 'stream');
        if (serverSettings.appendToken && serverSettings.token) {
          url += `?token=${encodeURIComponent(serverSettings.token)}`;
        }
        return new serverSettings.WebSocket(url);
      }
    };
    // The schema's defaults until the registry's settings load (they hold the same defaults).
    let settings: ISettings = DEFAULTS;
    const stream = new GpuStreamModel({
      api,
      interval: settings.refreshInterval,
      historySeconds: settings.historySeconds
    });
    const kernels = new KernelsModel(api);
    const policy = new PolicyModel(api);
    serviceManager.kernels.runningChanged.connect(() => void kernels.refresh().catch(() => 0));
    // A policy saved anywhere (another tab, %tfgpu, a widget, REST, a rename) is pushed on the
    // stream: the form re-reads its notebook's policy when a change names it, the kernels their
    // restart_required when a policy changed since the last message (at most once a second).
    stream.policiesChanged.connect((_, notice) => {
      void policy.follow(notice);
      if (notice.moved) {
        kernels.refreshSoon();
      }
    });

    const kernelAction = async (action: KernelAction, id: string, notebook: string | null) => {
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
          await KernelAPI.restartKernel(id, serverSettings);
        } else {
          await KernelAPI.interruptKernel(id, serverSettings);
        }
      } catch (error) {
        void showErrorMessage(`Could not ${action} the kernel of ${name}`, error as Error);
      }
      await kernels.refresh().catch(() => 0);
    };

    const panel = new GpuPanel({
      stream,
      kernels,
      policy,
      tracker,
      fields: policyFields(schema),
      historySeconds: () => settings.historySeconds,
      localPath: path => serviceManager.contents.localPath(path),
      openNotebook: path => void app.commands.execute('docmanager:open', { path }),
      kernelAction: (action, id, notebook) => void kernelAction(action, id, notebook)
    });
    // Notebook 7 (no lab shell) has it beside the notebook, where its debugger opens too.
    app.shell.add(panel, labShell ? 'left' : 'right', { rank: 600, type: 'GPUs' });
    restorer?.add(panel, 'jupyter-tfgpu:panel');

    app.commands.addCommand(OPEN_PANEL, {
      label: args => (args.isPalette ? 'Show the GPU Panel' : 'GPU Panel'),
      caption: 'GPUs, who holds their memory, and the current notebook’s GPU policy',
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: OPEN_PANEL, category: 'GPU', args: { isPalette: true } });

    const openPanel = () => void app.commands.execute(OPEN_PANEL);
    let item: GpuStatusItem | null = null;
    if (statusBar) {
      item = new GpuStatusItem({
        stream,
        kernels,
        kernelId: () => tracker.currentWidget?.sessionContext.session?.kernel?.id,
        kernelChanged: [tracker.currentChanged],
        choice: statusChoice(settings),
        onClick: openPanel
      });
      statusBar.registerStatusItem('jupyter-tfgpu:status', { item, align: 'left', rank: 100 });
    } else {
      // No status bar (Notebook 7): each notebook's toolbar shows its own kernel's memory.
      app.docRegistry.addWidgetExtension('Notebook', {
        createNew: widget =>
          addToolbarItem(widget as NotebookPanel, { stream, kernels, onClick: openPanel })
      });
    }

    const notifier = new GpuNotifier({
      events: serviceManager.events,
      stream,
      kernels,
      openKernels: () => {
        const ids: string[] = [];
        tracker.forEach(widget => {
          const id = widget.sessionContext.session?.kernel?.id;
          if (id) {
            ids.push(id);
          }
        });
        return ids;
      },
      notify: (notice: INotice) => {
        const actions: Notification.IAction[] = [{ label: 'GPU panel', callback: openPanel }];
        if (notice.notebook) {
          const path = notice.notebook;
          actions.unshift({
            label: 'Open notebook',
            callback: () => void app.commands.execute('docmanager:open', { path })
          });
        }
        Notification.emit(notice.message, notice.type, { autoClose: false, actions });
      },
      enforcement: settings.notifyEnforcement,
      capPercent: settings.capWarningPercent
    });

    const apply = (values: ISettingRegistry.ISettings['composite']) => {
      settings = readSettings(values);
      stream.historySeconds = settings.historySeconds;
      stream.interval = settings.refreshInterval;
      if (item) {
        item.choice = statusChoice(settings);
      }
      notifier.capPercent = settings.capWarningPercent;
      notifier.enforcement = settings.notifyEnforcement;
      panel.update();
    };
    if (registry) {
      void registry.load(PLUGIN_ID).then(
        loaded => {
          apply(loaded.composite);
          loaded.changed.connect(() => apply(loaded.composite));
        },
        reason => console.warn('jupyter-tfgpu: could not load its settings', reason)
      );
    }
  }
};

export default plugin;

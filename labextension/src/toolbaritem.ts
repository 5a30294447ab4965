import { JupyterFrontEnd } from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { KernelsModel } from './kernels';
import { GpuStatusItem } from './statusitem';
import { IStatusChoice } from './statustext';
import { GpuStreamModel } from './stream';

/** Name of the item in a notebook's toolbar. */
export const TOOLBAR_ITEM = 'tfgpu-memory';

/**
 * Put the GPU memory `panel`'s kernel holds in its toolbar, as a button that opens the GPU
 * panel: the status bar item's figures where there is no status bar (Notebook 7).
 */
export function addToolbarItem(
  panel: NotebookPanel,
  options: { stream: GpuStreamModel; kernels: KernelsModel; onClick: () => void }
): GpuStatusItem {
  const { sessionContext } = panel;
  const item = new GpuStatusItem({
    ...options,
    kernelId: () => sessionContext.session?.kernel?.id,
    kernelChanged: [sessionContext.kernelChanged],
    // A notebook's toolbar shows that notebook's kernel, whatever the status bar setting says.
    choice: { mode: 'kernel', indices: [] }
  });
  item.addClass('jp-tfgpu-ToolbarItem');
  panel.toolbar.addItem(TOOLBAR_ITEM, item);
  return item;
}

/**
 * The GPU memory of the current notebook's kernel in the status bar (returned), or where there
 * is no status bar (Notebook 7) each notebook's own kernel's in its toolbar (null returned).
 */
export function addMemoryItems(
  app: JupyterFrontEnd,
  statusBar: IStatusBar | null,
  tracker: INotebookTracker,
  options: {
    stream: GpuStreamModel;
    kernels: KernelsModel;
    choice: IStatusChoice;
    onClick: () => void;
  }
): GpuStatusItem | null {
  const { stream, kernels, onClick } = options;
  if (statusBar) {
    const item = new GpuStatusItem({
      ...options,
      kernelId: () => tracker.currentWidget?.sessionContext.session?.kernel?.id,
      kernelChanged: [tracker.currentChanged]
    });
    statusBar.registerStatusItem('jupyter-tfgpu:status', { item, align: 'left', rank: 100 });
    return item;
  }
  // No status bar (Notebook 7): each notebook's toolbar shows its own kernel's memory.
  app.docRegistry.addWidgetExtension('Notebook', {
    createNew: widget => addToolbarItem(widget as NotebookPanel, { stream, kernels, onClick })
  });
  return null;
}

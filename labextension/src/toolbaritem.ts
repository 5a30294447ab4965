import { NotebookPanel } from '@jupyterlab/notebook';

import { KernelsModel } from './kernels';
import { GpuStatusItem } from './statusitem';
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

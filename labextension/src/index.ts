import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';

import { GpuStatusItem } from './statusitem';

/** Adds the GPU item to the status bar when JupyterLab has one. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-tfgpu:plugin',
  description: 'Shows GPU utilization and memory from the jupyter-tfgpu server extension.',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    if (!statusBar) {
      return;
    }
    const item = new GpuStatusItem(app.serviceManager.serverSettings);
    statusBar.registerStatusItem('jupyter-tfgpu:status', {
      item,
      align: 'left',
      rank: 100
    });
  }
};

export default plugin;

import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import {
  addOpenPanelCommand,
  openKernels,
  openNotebook,
  openPanel,
  runKernelAction,
  showNotice
} from './commands';
import { followStream, KernelsModel } from './kernels';
import { GpuNotifier } from './notify';
import { GpuPanel } from './panel';
import { PolicyModel, policyFields } from './policy';
import schema from './policy.schema.json';
import { serverApi } from './request';
import { DEFAULTS, followSettings, ISettings, statusChoice } from './settings';
import { GpuStreamModel } from './stream';
import { addMemoryItems } from './toolbaritem';

const PLUGIN_ID = 'jupyter-tfgpu:plugin';

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
    const api = serverApi(serviceManager.serverSettings);
    // The schema's defaults until the registry's settings load (they hold the same defaults).
    let settings: ISettings = DEFAULTS;
    const stream = new GpuStreamModel({
      api,
      interval: settings.refreshInterval,
      historySeconds: settings.historySeconds
    });
    const kernels = new KernelsModel(api);
    // While the stream is live, each kernel's memory source and unknown state come with every
    // sample rather than with the next GET kernels.
    followStream(kernels, stream);
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

    const panel = new GpuPanel({
      stream,
      kernels,
      policy,
      tracker,
      fields: policyFields(schema),
      historySeconds: () => settings.historySeconds,
      localPath: path => serviceManager.contents.localPath(path),
      openNotebook: path => openNotebook(app, path),
      kernelAction: (action, id, notebook) =>
        void runKernelAction(app, tracker, kernels, action, id, notebook)
    });
    // Notebook 7 (no lab shell) has it beside the notebook, where its debugger opens too.
    app.shell.add(panel, labShell ? 'left' : 'right', { rank: 600, type: 'GPUs' });
    restorer?.add(panel, 'jupyter-tfgpu:panel');
    addOpenPanelCommand(app, panel, palette);

    const item = addMemoryItems(app, statusBar, tracker, {
      stream,
      kernels,
      choice: statusChoice(settings),
      onClick: () => openPanel(app)
    });

    const notifier = new GpuNotifier({
      events: serviceManager.events,
      stream,
      kernels,
      openKernels: () => openKernels(tracker),
      notify: notice => showNotice(app, notice),
      enforcement: settings.notifyEnforcement,
      capPercent: settings.capWarningPercent
    });

    followSettings(registry, PLUGIN_ID, changed => {
      settings = changed;
      stream.historySeconds = settings.historySeconds;
      stream.interval = settings.refreshInterval;
      if (item) {
        item.choice = statusChoice(settings);
      }
      notifier.capPercent = settings.capWarningPercent;
      notifier.enforcement = settings.notifyEnforcement;
      panel.update();
    });
  }
};

export default plugin;

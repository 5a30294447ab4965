import { INotebookTracker } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { describeGpu, DASH, statusText } from './format';
import { kernelGpus } from './holders';
import { KernelsModel } from './kernels';
import { GpuStreamModel } from './stream';

/** Which GPUs the status bar shows (the extension's settings). */
export interface IStatusChoice {
  /** `kernel`: those the current notebook's kernel uses (else all); `all`: every GPU. */
  mode: 'kernel' | 'all';
  /** When not empty, exactly these GPU indices. */
  indices: number[];
}

/** Status bar item: utilization and memory of the current notebook's GPUs; click opens the panel. */
export class GpuStatusItem extends Widget {
  /** Show `stream`'s figures for the GPUs `tracker`'s current notebook uses. */
  constructor(private _options: GpuStatusItem.IOptions) {
    super();
    this.addClass('jp-tfgpu-StatusItem');
    this._text.className = 'jp-tfgpu-StatusItem-text';
    this._label.className = 'jp-tfgpu-Badge jp-tfgpu-mod-simulated';
    this._label.textContent = 'SIMULATED';
    this.node.append(this._text, this._label);
    this.node.tabIndex = 0;
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', _options.onClick);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        _options.onClick();
      }
    });
    const render = () => this._render();
    _options.stream.changed.connect(render);
    _options.kernels.changed.connect(render);
    _options.tracker?.currentChanged.connect(render);
    this._render();
  }

  /** Which GPUs to show. */
  set choice(choice: IStatusChoice) {
    this._choice = choice;
    this._render();
  }

  private _render(): void {
    const { stream, kernels, tracker } = this._options;
    const status = stream.status;
    const snapshot = stream.snapshot;
    if (stream.error) {
      return this._show('GPU: error', stream.error, false);
    }
    if (!status) {
      return this._show(`GPU: ${DASH}`, 'Waiting for the GPU server', false);
    }
    if (!status.available) {
      return this._show('GPU: n/a', status.reason ?? 'No GPU backend is available', false);
    }
    if (!snapshot) {
      return this._show(`GPU: ${DASH}`, 'Waiting for the first sample', status.simulated);
    }
    const all = snapshot.gpus;
    const { mode, indices } = this._choice;
    let gpus = all;
    let why = 'All GPUs';
    if (indices.length) {
      gpus = all.filter(g => indices.includes(g.index));
      why = 'GPUs chosen in the settings';
    } else if (mode === 'kernel') {
      const kernelId = tracker?.currentWidget?.sessionContext.session?.kernel?.id;
      const used = kernelGpus(snapshot, kernelId, kernels.find(kernelId));
      if (used && !used.length) {
        return this._show(
          'GPU: CPU only',
          "This notebook's kernel sees no GPU",
          snapshot.simulated
        );
      }
      if (used) {
        gpus = used;
        why = "GPUs this notebook's kernel uses";
      }
    }
    const tooltip = `${why} (click for the GPU panel)\n${gpus.map(describeGpu).join('\n')}`;
    this._show(statusText(gpus), tooltip, snapshot.simulated);
  }

  private _show(text: string, tooltip: string, simulated: boolean): void {
    this._text.textContent = text;
    this.node.title = simulated ? `${tooltip}\n(simulated GPUs)` : tooltip;
    this._label.hidden = !simulated;
  }

  private _choice: IStatusChoice = { mode: 'kernel', indices: [] };
  private _text = document.createElement('span');
  private _label = document.createElement('span');
}

/** Options of `GpuStatusItem`. */
export namespace GpuStatusItem {
  /** The models to show and what a click does. */
  export interface IOptions {
    stream: GpuStreamModel;
    kernels: KernelsModel;
    tracker: INotebookTracker | null;
    onClick: () => void;
  }
}

import { INotebookTracker } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { KernelsModel } from './kernels';
import { IStatusChoice, statusLine } from './statustext';
import { GpuStreamModel } from './stream';

/** Status bar item: the GPU memory the current notebook's kernel holds; click opens the panel. */
export class GpuStatusItem extends Widget {
  /** Show `stream`'s figures for `tracker`'s current notebook's kernel. */
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
    const kernelId = tracker?.currentWidget?.sessionContext.session?.kernel?.id;
    const line = statusLine({
      status: stream.status,
      snapshot: stream.snapshot,
      error: stream.error,
      kernelId,
      kernel: kernels.find(kernelId),
      choice: this._choice
    });
    this._text.textContent = line.text;
    this.node.title = line.simulated ? `${line.tooltip}\n(simulated GPUs)` : line.tooltip;
    this._label.hidden = !line.simulated;
    this.toggleClass('jp-mod-warning', line.warning);
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

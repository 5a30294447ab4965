import { ISignal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { KernelsModel } from './kernels';
import { IStatusChoice, statusLine } from './statustext';
import { GpuStreamModel } from './stream';

/**
 * The GPU memory a notebook's kernel holds, as a button that opens the panel: JupyterLab's
 * status bar item (the current notebook's kernel) and, where there is no status bar
 * (Notebook 7), an item in each notebook's toolbar (that notebook's kernel).
 */
export class GpuStatusItem extends Widget {
  /** Show `stream`'s figures for the kernel `kernelId` names. */
  constructor(private _options: GpuStatusItem.IOptions) {
    super();
    this.addClass('jp-tfgpu-StatusItem');
    this._text.className = 'jp-tfgpu-StatusItem-text';
    this._label.className = 'jp-tfgpu-Badge jp-tfgpu-mod-simulated';
    this._label.textContent = 'SIMULATED';
    // The item's aria-label says it all; the parts would only repeat it.
    this._text.setAttribute('aria-hidden', 'true');
    this._label.setAttribute('aria-hidden', 'true');
    this.node.append(this._text, this._label);
    this._choice = _options.choice;
    this.node.tabIndex = 0;
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', _options.onClick);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        _options.onClick();
      }
    });
    // Connected with `this`, so that disposing of the item (its notebook closed) disconnects.
    _options.stream.changed.connect(this._render, this);
    _options.kernels.changed.connect(this._render, this);
    for (const signal of _options.kernelChanged) {
      signal.connect(this._render, this);
    }
    this._render();
  }

  /** Which GPUs to show. */
  set choice(choice: IStatusChoice) {
    this._choice = choice;
    this._render();
  }

  private _render(): void {
    const { stream, kernels, kernelId } = this._options;
    const id = kernelId();
    const line = statusLine({
      status: stream.status,
      snapshot: stream.snapshot,
      error: stream.error,
      kernelId: id,
      kernel: kernels.find(id),
      choice: this._choice
    });
    this._text.textContent = line.text;
    const simulated = '(simulated GPUs)';
    this.node.title = line.simulated ? `${line.tooltip}\n${simulated}` : line.tooltip;
    this.node.setAttribute(
      'aria-label',
      line.simulated ? `${line.label} ${simulated}` : line.label
    );
    this._label.hidden = !line.simulated;
    this.toggleClass('jp-mod-warning', line.warning);
  }

  private _choice: IStatusChoice;
  private _text = document.createElement('span');
  private _label = document.createElement('span');
}

/** Options of `GpuStatusItem`. */
export namespace GpuStatusItem {
  /** The models to show, whose kernel, and what a click does. */
  export interface IOptions {
    stream: GpuStreamModel;
    kernels: KernelsModel;
    /** The kernel whose memory to show (none without a notebook or a kernel). */
    kernelId: () => string | null | undefined;
    /** Signals after which `kernelId` may name another kernel. */
    kernelChanged: ISignal<unknown, unknown>[];
    /** Which GPUs to show. */
    choice: IStatusChoice;
    onClick: () => void;
  }
}

import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { DASH, formatMemory, formatPercent } from './format';
import { requestAPI } from './request';
import { IGpu, ISnapshot, IStatus } from './types';

/** Slowest poll, reached by backoff while the server keeps failing. */
const MAX_INTERVAL = 60 * 1000;

/** Status bar item showing the first GPU's utilization and memory, polled from the server. */
export class GpuStatusItem extends Widget {
  /** Build the item and start polling with the given server settings. */
  constructor(settings: ServerConnection.ISettings) {
    super();
    this._settings = settings;
    this.addClass('jp-tfgpu-StatusItem');
    this._text.className = 'jp-tfgpu-StatusItem-text';
    this._label.className = 'jp-tfgpu-StatusItem-simulated';
    this._label.textContent = 'SIMULATED';
    this.node.append(this._text, this._label);
    this._show(`GPU: ${DASH}`, 'Waiting for the GPU server', false);
    this._poll = new Poll({
      factory: () => this._refresh(),
      frequency: { interval: 5000, backoff: true, max: MAX_INTERVAL },
      name: 'jupyter-tfgpu:status-item',
      standby: 'when-hidden'
    });
  }

  /** Stop polling and dispose the widget. */
  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  /** Fetch status (until the backend is available), then the latest snapshot. */
  private async _refresh(): Promise<void> {
    try {
      if (!this._status?.available) {
        this._status = await requestAPI<IStatus>('status', {}, this._settings);
        const interval = Math.max(this._status.sample_interval, 1) * 1000;
        this._poll.frequency = {
          ...this._poll.frequency,
          interval: Math.min(interval, MAX_INTERVAL)
        };
      }
      if (!this._status.available) {
        const reason = this._status.reason ?? 'No GPU backend is available';
        this._show('GPU: n/a', reason, this._status.simulated);
        return;
      }
      const snapshot = await requestAPI<ISnapshot>('gpus', {}, this._settings);
      this._render(snapshot);
    } catch (error) {
      // The server may have restarted with another backend: ask for status again.
      this._status = null;
      this._show('GPU: error', explain(error), false);
      throw error;
    }
  }

  /** Show the first GPU in the bar and every GPU in the tooltip. */
  private _render(snapshot: ISnapshot): void {
    const first = snapshot.gpus[0];
    if (!first) {
      this._show('GPU: none', 'The server sees no GPU', snapshot.simulated);
      return;
    }
    const text = first.lost
      ? `GPU ${first.index}: lost`
      : `GPU ${formatPercent(first.utilization.gpu)} \u00b7 ${formatMemory(first.memory.used, first.memory.total)}`;
    this._show(text, snapshot.gpus.map(describe).join('\n'), snapshot.simulated);
  }

  /** Set the text, tooltip and SIMULATED label. */
  private _show(text: string, tooltip: string, simulated: boolean): void {
    this._text.textContent = text;
    this.node.title = simulated ? `${tooltip}\n(simulated GPUs)` : tooltip;
    this._label.hidden = !simulated;
  }

  private _settings: ServerConnection.ISettings;
  private _status: IStatus | null = null;
  private _poll: Poll;
  private _text = document.createElement('span');
  private _label = document.createElement('span');
}

/** A tooltip for a failed request. */
function explain(error: unknown): string {
  if (error instanceof ServerConnection.ResponseError && error.response.status === 404) {
    return 'The jupyter-tfgpu server extension is not enabled on this server';
  }
  return error instanceof Error ? error.message : String(error);
}

/** One tooltip line for a GPU. */
function describe(gpu: IGpu): string {
  if (gpu.lost) {
    return `GPU ${gpu.index} ${gpu.name}: lost`;
  }
  const temperature = gpu.temperature === null ? DASH : `${gpu.temperature} \u00b0C`;
  return (
    `GPU ${gpu.index} ${gpu.name}: ${formatPercent(gpu.utilization.gpu)} busy, ` +
    `memory ${formatMemory(gpu.memory.used, gpu.memory.total)}, ${temperature}`
  );
}

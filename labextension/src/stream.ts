import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { IPolicyChangeNotice, PolicyChangeTracker } from './policychanges';
import { IApi, IHistory, IPolicyChanges, ISnapshot, IStatus, IStreamKernel } from './types';

/** One GPU's recent readings, oldest first; null where the GPU gave no value. */
export interface ISeries {
  /** Seconds since the epoch. */
  t: number[];
  utilization: (number | null)[];
  memory: (number | null)[];
}

/** Per-GPU series (by GPU index) from the server's history. */
export function seriesFromHistory(history: IHistory): Map<number, ISeries> {
  const series = new Map<number, ISeries>();
  for (const gpu of history.gpus) {
    series.set(gpu.index, {
      t: [...history.timestamps],
      utilization: [...gpu.utilization],
      memory: [...gpu.memory_used]
    });
  }
  return series;
}

/** Add a snapshot's readings to `series` (only if newer) and drop points older than `seconds`. */
export function appendSnapshot(
  series: Map<number, ISeries>,
  snapshot: ISnapshot,
  seconds: number
): void {
  const now = snapshot.timestamp;
  if (now === null) {
    return;
  }
  for (const gpu of snapshot.gpus) {
    let s = series.get(gpu.index);
    if (!s) {
      series.set(gpu.index, (s = { t: [], utilization: [], memory: [] }));
    }
    // History timestamps are rounded to the millisecond: the same sample must not repeat.
    if (s.t.length && s.t[s.t.length - 1] >= now - 0.005) {
      continue;
    }
    s.t.push(now);
    s.utilization.push(gpu.lost ? null : gpu.utilization.gpu);
    s.memory.push(gpu.lost ? null : gpu.memory.used);
    const old = s.t.findIndex(t => t >= now - seconds);
    if (old > 0) {
      s.t.splice(0, old);
      s.utilization.splice(0, old);
      s.memory.splice(0, old);
    }
  }
}

/**
 * The GPU snapshots: the `stream` websocket while someone watches live (the panel is open),
 * else a `GET gpus` every `interval` seconds (for the status bar and notifications).
 * The socket reconnects with backoff and is closed while the browser tab is hidden.
 */
export class GpuStreamModel implements IDisposable {
  /** Start reading with `api`; `interval` is in seconds, `historySeconds` the sparkline span. */
  constructor(options: GpuStreamModel.IOptions) {
    this._api = options.api;
    this._historySeconds = options.historySeconds;
    this._poll = new Poll({
      factory: () => this._tick(),
      frequency: { interval: options.interval * 1000, backoff: true, max: 60 * 1000 },
      name: 'jupyter-tfgpu:stream',
      standby: 'when-hidden'
    });
    if (typeof document !== 'undefined') {
      document.addEventListener('visibilitychange', this._onVisibility);
    }
  }

  /** Emitted whenever the status, a snapshot, the series or the connection state changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted for each stream message with its policy changes (`moved`: a change since the last). */
  get policiesChanged(): ISignal<this, IPolicyChangeNotice> {
    return this._policiesChanged;
  }

  /** The server's answer to GET `status`, once known. */
  get status(): IStatus | null {
    return this._status;
  }

  /** The latest snapshot. */
  get snapshot(): ISnapshot | null {
    return this._snapshot;
  }

  /**
   * The kernels as the latest snapshot's stream message summed them up; null when that snapshot
   * came from GET `gpus` (no live stream), which has none.
   */
  get kernels(): readonly IStreamKernel[] | null {
    return this._kernels;
  }

  /** Why the last request failed (null after a success). */
  get error(): string | null {
    return this._error;
  }

  /** Whether the websocket is open and has delivered. */
  get connected(): boolean {
    return this._socket !== null && this._socket === this._delivering;
  }

  /** Recent readings of one GPU. */
  series(index: number): ISeries | undefined {
    return this._series.get(index);
  }

  /** Whether to stream every snapshot (true while the panel is visible). */
  get live(): boolean {
    return this._live;
  }
  set live(live: boolean) {
    if (live !== this._live) {
      this._live = live;
      void this._poll.refresh();
    }
  }

  /**
   * Whether PCIe and NVLink figures are asked for while live (they cost driver time, so only on
   * demand, and never by the background polling).
   */
  get interconnect(): boolean {
    return this._interconnect;
  }
  set interconnect(on: boolean) {
    if (on !== this._interconnect) {
      this._interconnect = on;
      this._askInterconnect();
    }
  }

  /** Seconds between background refreshes (and socket checks). */
  set interval(seconds: number) {
    this._poll.frequency = { ...this._poll.frequency, interval: Math.max(1, seconds) * 1000 };
  }

  /** Seconds of readings kept for the sparklines. */
  set historySeconds(seconds: number) {
    this._historySeconds = seconds;
  }

  /** Whether the model is disposed. */
  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /** Close the socket and stop polling. */
  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._close();
    // Poll.dispose() leaves a scheduled tick's timer; stopping first clears it.
    void this._poll.stop();
    this._poll.dispose();
    if (typeof document !== 'undefined') {
      document.removeEventListener('visibilitychange', this._onVisibility);
    }
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    try {
      if (!this._status?.available) {
        this._status = await this._api.request<IStatus>('status');
        this._changed.emit();
        if (!this._status.available) {
          this._close();
          this._setError(null);
          this._failures = 0;
          return;
        }
      }
      if (this._live) {
        await this._open();
      } else {
        this._close();
        this._receive(await this._api.request<ISnapshot>('gpus'));
      }
      this._setError(null);
      this._failures = 0;
    } catch (error) {
      // The server may come back with another backend: ask for its status again.
      this._status = null;
      this._setError(error instanceof Error ? error.message : String(error));
      // Back off from the interval, 3x per failure in a row, up to the maximum. Lumino's own
      // back-off grows from the interval of the tick that failed, which is 0 after refresh():
      // the first retries could then come at once, one after the other.
      this._failures += 1;
      const { interval, max } = this._poll.frequency;
      const delay = Math.min(max, interval * 3 ** (this._failures - 1));
      void this._poll.schedule({ interval: delay, phase: 'rejected' });
      throw error;
    }
  }

  /** Open the socket; settles on its first message (resolve) or on a close before it (reject). */
  private _open(): Promise<void> {
    if (this._socket) {
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const socket = (this._socket = this._api.connect());
      let delivered = false;
      socket.onmessage = (event: MessageEvent) => {
        if (!delivered) {
          delivered = true;
          this._delivering = socket;
          if (this._interconnect) {
            this._askInterconnect();
          }
          resolve();
          // The history fills the sparklines, also after a gap while disconnected or hidden.
          void this._loadHistory();
        }
        this._receive(JSON.parse(event.data));
      };
      socket.onclose = () => {
        if (this._socket !== socket) {
          return;
        }
        this._socket = null;
        if (delivered) {
          this._changed.emit();
          void this._poll.refresh();
        } else {
          reject(new Error('The GPU stream closed before it delivered'));
        }
      };
    });
  }

  /** Tell the server over the open socket whether to read PCIe and NVLink for this client. */
  private _askInterconnect(): void {
    const socket = this._delivering;
    if (socket && socket === this._socket && socket.readyState === 1) {
      socket.send(JSON.stringify({ pcie: this._interconnect }));
    }
  }

  private _close(): void {
    const socket = this._socket;
    if (socket) {
      this._socket = null;
      socket.onmessage = socket.onclose = null;
      socket.close();
      this._changed.emit();
    }
  }

  private async _loadHistory(): Promise<void> {
    try {
      const seconds = Math.ceil(this._historySeconds);
      const history = await this._api.request<IHistory>(`gpus/history?seconds=${seconds}`);
      const latest = this._snapshot;
      this._series = seriesFromHistory(history);
      if (latest) {
        appendSnapshot(this._series, latest, this._historySeconds);
      }
      this._changed.emit();
    } catch {
      // The sparklines then start empty; live readings still arrive.
    }
  }

  private _receive(
    message: ISnapshot & { kernels?: IStreamKernel[]; policies?: IPolicyChanges }
  ): void {
    const { kernels, policies, ...snapshot } = message;
    this._kernels = kernels ?? null;
    // A message re-sent for a policy change repeats the snapshot; the series skip its time.
    appendSnapshot(this._series, snapshot, this._historySeconds);
    this._snapshot = snapshot;
    this._changed.emit();
    if (policies) {
      // A policy change re-sends the latest snapshot at once, with the change numbered.
      this._policiesChanged.emit(this._policyTracker.update(policies));
    }
  }

  private _setError(error: string | null): void {
    if (error !== this._error) {
      this._error = error;
      this._changed.emit();
    }
  }

  private _onVisibility = (): void => {
    if (document.visibilityState === 'hidden') {
      this._close();
    } else {
      void this._poll.refresh();
    }
  };

  private _api: IApi;
  private _changed = new Signal<this, void>(this);
  private _error: string | null = null;
  private _failures = 0;
  private _historySeconds: number;
  private _interconnect = false;
  private _kernels: IStreamKernel[] | null = null;
  private _live = false;
  private _poll: Poll;
  private _policiesChanged = new Signal<this, IPolicyChangeNotice>(this);
  private _policyTracker = new PolicyChangeTracker();
  private _series = new Map<number, ISeries>();
  private _snapshot: ISnapshot | null = null;
  private _socket: WebSocket | null = null;
  private _delivering: WebSocket | null = null;
  private _status: IStatus | null = null;
}

/** Options of `GpuStreamModel`. */
export namespace GpuStreamModel {
  /** How to reach the server, and the refresh settings. */
  export interface IOptions {
    api: IApi;
    /** Seconds between background refreshes (the `refreshInterval` setting). */
    interval: number;
    /** Seconds of history for the sparklines (the `historySeconds` setting). */
    historySeconds: number;
  }
}

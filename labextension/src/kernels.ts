import { IDisposable } from '@lumino/disposable';
import { Poll, Throttler } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { IApi, IKernel } from './types';

/** Seconds between refreshes while the panel shows the kernels, and while it does not. */
const ACTIVE_INTERVAL = 5;
const BACKGROUND_INTERVAL = 30;
/**
 * Milliseconds between two re-reads for policy changes: a burst of changes (a script, or a
 * kernel looping on its policy) costs each open tab one GET `kernels` a second, not one each.
 */
export const FOLLOW_INTERVAL = 1000;

/**
 * The server's kernels with their policies (GET `kernels`): what each started with and
 * whether it needs a restart. Refreshed often while the panel is open, rarely otherwise,
 * and at once after anything that changes them (`refresh()`).
 */
export class KernelsModel implements IDisposable {
  /** Start polling through `api`. */
  constructor(api: IApi) {
    this._api = api;
    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: BACKGROUND_INTERVAL * 1000, backoff: true, max: 5 * 60 * 1000 },
      name: 'jupyter-tfgpu:kernels',
      standby: 'when-hidden'
    });
  }

  /** Emitted after each refresh that changed something. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The running kernels, as of the last refresh. */
  get kernels(): readonly IKernel[] {
    return this._kernels;
  }

  /** One kernel by id. */
  find(id: string | null | undefined): IKernel | undefined {
    return this._kernels.find(k => k.id === id);
  }

  /** Refresh often (true while the panel is visible). */
  set active(active: boolean) {
    const interval = (active ? ACTIVE_INTERVAL : BACKGROUND_INTERVAL) * 1000;
    if (interval !== this._poll.frequency.interval) {
      this._poll.frequency = { ...this._poll.frequency, interval };
      if (active) {
        void this._poll.refresh();
      }
    }
  }

  /**
   * A policy changed somewhere: re-read the kernels (their `restart_required`) within
   * `FOLLOW_INTERVAL`, at most once per interval while changes keep coming. A change that comes
   * while a re-read is on its way gets one more re-read, so the last change is never missed.
   */
  refreshSoon(): void {
    this._stale = true;
    if (this._following || this.isDisposed) {
      return; // the re-read already scheduled reads this change too
    }
    this._following = true;
    const done = () => {
      this._following = false;
      if (this._stale && !this.isDisposed) {
        this.refreshSoon();
      }
    };
    this._follower.invoke().then(done, done);
  }

  /** Fetch the kernels now. */
  async refresh(): Promise<void> {
    const { kernels } = await this._api.request<{ kernels: IKernel[] }>('kernels');
    const text = JSON.stringify(kernels);
    if (text !== this._text) {
      this._text = text;
      this._kernels = kernels;
      this._changed.emit();
    }
  }

  /** Whether the model is disposed. */
  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /** Stop polling. */
  dispose(): void {
    // Poll.dispose() leaves a scheduled tick's timer; stopping first clears it.
    void this._poll.stop();
    this._poll.dispose();
    void this._follower.stop();
    this._follower.dispose();
    Signal.clearData(this);
  }

  private _api: IApi;
  private _changed = new Signal<this, void>(this);
  // Trailing edge: the re-read runs FOLLOW_INTERVAL after the first change of a burst.
  private _follower = new Throttler(
    () => {
      this._stale = false; // changes from here on need another re-read
      return this.refresh();
    },
    { limit: FOLLOW_INTERVAL, edge: 'trailing' }
  );
  private _following = false;
  private _stale = false;
  private _kernels: IKernel[] = [];
  private _poll: Poll;
  private _text = '';
}

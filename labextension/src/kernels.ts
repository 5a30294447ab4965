import { IDisposable } from '@lumino/disposable';
import { Poll, Throttler } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { GpuStreamModel } from './stream';
import { IApi, IKernel, IStreamKernel } from './types';

/** Seconds between refreshes while the panel shows the kernels, and while it does not. */
const ACTIVE_INTERVAL = 5;
const BACKGROUND_INTERVAL = 30;
/**
 * Milliseconds between two re-reads for policy changes: a burst of changes (a script, or a
 * kernel looping on its policy) costs each open tab one GET `kernels` a second, not one each.
 */
export const FOLLOW_INTERVAL = 1000;

/**
 * A kernel as GET `kernels` showed it, with where its GPU memory figure comes from and whether
 * it is unknown as the stream's newer `summary` says (the per-GPU figures only GET has).
 */
export function withSummary(kernel: IKernel, summary: IStreamKernel | undefined): IKernel {
  if (!summary) {
    return kernel;
  }
  const gpu_memory = {
    ...kernel.gpu_memory,
    source: summary.gpu_memory_source,
    unknown: summary.gpu_memory_unknown
  };
  return { ...kernel, gpu_memory };
}

/**
 * The server's kernels with their policies (GET `kernels`): what each started with and
 * whether it needs a restart. Refreshed often while the panel is open, rarely otherwise,
 * and at once after anything that changes them (`refresh()`). While the stream is live, each
 * kernel's memory source and unknown state are the stream's (`follow()`), a sample old at most.
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

  /** The running kernels, as of the last refresh and the stream's latest message. */
  get kernels(): readonly IKernel[] {
    return this._shown;
  }

  /** One kernel by id. */
  find(id: string | null | undefined): IKernel | undefined {
    return this._shown.find(k => k.id === id);
  }

  /**
   * Take each kernel's memory source and unknown state from the stream's latest message (null:
   * no live stream, GET `kernels` alone). When a kernel's figure changes source or its cap's
   * enforcement level, or a kernel GET did not list appears, the kernels are read again soon: the per-GPU figures (a kernel's
   * own report) are GET's alone. Only a change does that, so a difference that stays costs
   * one read.
   */
  follow(summary: readonly IStreamKernel[] | null): void {
    const before = new Map((this._summary ?? []).map(s => [s.id, s]));
    this._summary = summary;
    // A new source, or a new enforcement level (whose mechanism and reason only GET has).
    const changed = (s: IStreamKernel) => {
      const was = before.get(s.id);
      if (was) {
        return was.gpu_memory_source !== s.gpu_memory_source || was.enforcement !== s.enforcement;
      }
      const read = this._byId.get(s.id);
      return (
        !read ||
        (read.gpu_memory.source ?? null) !== s.gpu_memory_source ||
        (read.enforcement?.level ?? s.enforcement) !== s.enforcement
      );
    };
    if (this._read && summary?.some(changed)) {
      this.refreshSoon();
    }
    this._show();
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
    this._kernels = kernels;
    this._byId = new Map(kernels.map(k => [k.id, k]));
    this._read = true;
    this._show();
  }

  /** What GET `kernels` said, with the stream's figures; `changed` when that differs. */
  private _show(): void {
    const summary = new Map((this._summary ?? []).map(s => [s.id, s]));
    const shown = this._kernels.map(k => withSummary(k, summary.get(k.id)));
    const text = JSON.stringify(shown);
    if (text !== this._text) {
      this._text = text;
      this._shown = shown;
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
  private _byId = new Map<string, IKernel>();
  private _kernels: IKernel[] = [];
  private _poll: Poll;
  private _read = false;
  private _shown: IKernel[] = [];
  private _summary: readonly IStreamKernel[] | null = null;
  private _text = '';
}

/** Keep `kernels` following the kernel summary of each of `stream`'s messages. */
export function followStream(kernels: KernelsModel, stream: GpuStreamModel): void {
  stream.changed.connect(() => kernels.follow(stream.kernels), kernels);
}

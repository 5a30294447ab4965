import type { Event } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';

import { basename, formatBytes } from './format';
import { INearCap, nearCap } from './holders';
import { KernelsModel } from './kernels';
import { GpuStreamModel } from './stream';
import { IEnforcementEvent, IKernel } from './types';

/** Schema id of the server's enforcement events on jupyter_server's event bus. */
export const ENFORCEMENT_SCHEMA = 'https://jupyter-tfgpu.readthedocs.io/events/enforcement/v1';

/** Re-arm a kernel's "near its cap" notice once it drops this many points below the threshold. */
const HYSTERESIS = 10;

/** A notification to show: its level, text, and the notebook it concerns. */
export interface INotice {
  type: 'info' | 'warning' | 'error';
  message: string;
  notebook: string | null;
}

/** The notice for one enforcement event (null when it is not one). */
export function enforcementNotice(event: Event.Emission): INotice | null {
  if (event.schema_id !== ENFORCEMENT_SCHEMA) {
    return null;
  }
  const e = event as unknown as IEnforcementEvent;
  const acted = !e.dry_run && e.action !== 'warn' && e.status !== 'skipped';
  // The server words the whole sentence: whose kernel, what it held, what was done.
  const message = e.reason;
  return { type: acted ? 'error' : 'warning', message, notebook: e.notebook ?? null };
}

/** The notice for a kernel near its memory limit. */
export function capNotice(near: INearCap): INotice {
  const where = near.kernel.notebook ? basename(near.kernel.notebook) : 'A kernel';
  const percent = Math.round((near.used / near.limit) * 100);
  return {
    type: 'warning',
    message:
      `${where} uses ${formatBytes(near.used)} of its ${formatBytes(near.limit)} GPU memory ` +
      `limit (${percent}%). Past the limit it gets out-of-memory errors.`,
    notebook: near.kernel.notebook
  };
}

/**
 * The notice for a kernel that asked the server to choose its GPUs (`devices: "auto"`) and
 * got none, so it runs on the CPU only; null for any other kernel.
 */
export function placementNotice(kernel: IKernel): INotice | null {
  const placement = kernel.applied?.placement;
  if (!placement || placement.chosen.length) {
    return null;
  }
  const where = kernel.notebook ? basename(kernel.notebook) : `Kernel ${kernel.id.slice(0, 8)}`;
  const reason = placement.reason ?? 'no GPU was free';
  // Without a strategy the server could not place at all, and its reason says what follows.
  const cpu = placement.strategy === null ? '' : '; this kernel runs on the CPU only';
  return { type: 'warning', message: `${where}: ${reason}${cpu}.`, notebook: kernel.notebook };
}

/**
 * Turns enforcement events, kernels nearing their memory limit, and open notebooks' kernels
 * that started without the GPU they asked for into notifications.
 * Every kernel of this (single-user) server is the user's own.
 */
export class GpuNotifier implements IDisposable {
  /** Listen to `events`, and watch `stream` against `kernels`' limits. */
  constructor(private _options: GpuNotifier.IOptions) {
    this.enforcement = _options.enforcement;
    this.capPercent = _options.capPercent;
    _options.events.stream.connect(this._onEvent, this);
    _options.stream.changed.connect(this._onSnapshot, this);
    _options.kernels.changed.connect(this._onKernels, this);
  }

  /** Whether to notify enforcement actions. */
  enforcement: boolean;

  /** Percent of its memory limit at which a kernel's owner is told (0: never). */
  capPercent: number;

  /** Whether the notifier is disposed. */
  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Stop listening. */
  dispose(): void {
    this._disposed = true;
    this._options.events.stream.disconnect(this._onEvent, this);
    this._options.stream.changed.disconnect(this._onSnapshot, this);
    this._options.kernels.changed.disconnect(this._onKernels, this);
  }

  private _onEvent(_: unknown, event: Event.Emission): void {
    const notice = this.enforcement ? enforcementNotice(event) : null;
    if (notice) {
      this._options.notify(notice);
    }
  }

  private _onSnapshot(): void {
    const { stream, kernels } = this._options;
    const kernelList = kernels.kernels;
    const over = nearCap(stream.snapshot, kernelList, this.capPercent);
    for (const near of over) {
      if (!this._warned.has(near.kernel.id)) {
        this._warned.add(near.kernel.id);
        this._options.notify(capNotice(near));
      }
    }
    const still = nearCap(stream.snapshot, kernelList, Math.max(1, this.capPercent - HYSTERESIS));
    for (const id of this._warned) {
      if (!still.some(n => n.kernel.id === id)) {
        this._warned.delete(id);
      }
    }
  }

  /** Once per kernel start (a restart keeps the id, not the start time). */
  private _onKernels(): void {
    const open = new Set(this._options.openKernels());
    for (const kernel of this._options.kernels.kernels) {
      const notice = open.has(kernel.id) ? placementNotice(kernel) : null;
      const start = `${kernel.id} ${kernel.applied?.started ?? ''}`;
      if (notice && !this._placed.has(start)) {
        this._placed.add(start);
        this._options.notify(notice);
      }
    }
  }

  private _disposed = false;
  private _placed = new Set<string>();
  private _warned = new Set<string>();
}

/** Options of `GpuNotifier`. */
export namespace GpuNotifier {
  /** Where events and readings come from, and how to show a notice. */
  export interface IOptions {
    events: Event.IManager;
    stream: GpuStreamModel;
    kernels: KernelsModel;
    /** The ids of the kernels of the notebooks open in this lab. */
    openKernels: () => string[];
    notify: (notice: INotice) => void;
    /** Whether to notify enforcement actions (the `notifyEnforcement` setting). */
    enforcement: boolean;
    /** Percent of its limit at which to warn, 0: never (the `capWarningPercent` setting). */
    capPercent: number;
  }
}

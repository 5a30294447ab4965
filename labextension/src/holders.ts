/** Who holds GPU memory, from a snapshot's process lists and the kernels' own figures (pure). */

import { MiB } from './format';
import { IKernel, ISnapshot } from './types';

/** One kernel's (or one other process's) memory across the GPUs. */
export interface IHolder {
  /** null for a process no kernel of this server started. */
  kernelId: string | null;
  notebook: string | null;
  pids: number[];
  /** Bytes on all GPUs together. */
  total: number;
  /**
   * Bytes per GPU, by GPU index; `ownReport` where the figure is the kernel's frameworks' own
   * report (the server cannot match the GPU's processes to it), which leaves out the CUDA context.
   */
  gpus: { index: number; used: number; ownReport?: boolean }[];
  /** Why the kernel's GPU memory is unknown now (its figures are the last known); else absent. */
  unknown?: string;
  /** Present on the NVIDIA MPS server's process (a holder of no kernel). */
  mpsServer?: true;
}

/** The holders of a snapshot: kernels (largest first), other processes, and unknown kernels. */
export interface IHolders {
  kernels: IHolder[];
  others: IHolder[];
  /** Kernels whose GPU memory is unknown now and that have no figure to show. */
  unknown: IKernel[];
}

/**
 * Processes grouped by kernel (largest first), and the processes of no kernel. With the kernels
 * as `KernelsModel` has them, a GPU where a kernel's figure is its own report shows that report
 * (also where NVML lists no process for it), and a kernel whose memory is unknown now says why.
 */
export function groupHolders(
  snapshot: ISnapshot | null,
  described: readonly IKernel[] = []
): IHolders {
  const kernels = new Map<string, IHolder>();
  // Kernel id -> the GPUs where NVML gave a figure for one of its PIDs (fresher than GET kernels).
  const byPid = new Map<string, Set<number>>();
  const others: IHolder[] = [];
  for (const gpu of snapshot?.gpus ?? []) {
    for (const p of gpu.processes) {
      const used = p.used_memory ?? 0;
      if (!p.kernel_id) {
        others.push({
          kernelId: null,
          notebook: null,
          pids: [p.pid],
          total: used,
          gpus: [{ index: gpu.index, used }],
          ...(p.mps === 'server' ? { mpsServer: true as const } : {})
        });
        continue;
      }
      let holder = kernels.get(p.kernel_id);
      if (!holder) {
        holder = { kernelId: p.kernel_id, notebook: p.notebook, pids: [], total: 0, gpus: [] };
        kernels.set(p.kernel_id, holder);
      }
      holder.notebook ??= p.notebook;
      if (!holder.pids.includes(p.pid)) {
        holder.pids.push(p.pid);
      }
      if (p.attributed_by !== 'kernel_report' && p.used_memory !== null) {
        const gpus = byPid.get(p.kernel_id) ?? new Set<number>();
        byPid.set(p.kernel_id, gpus.add(gpu.index));
      }
      holder.total += used;
      const row = holder.gpus.find(g => g.index === gpu.index);
      if (row) {
        row.used += used;
      } else {
        holder.gpus.push({ index: gpu.index, used });
      }
    }
  }
  const unknown: IKernel[] = [];
  for (const kernel of described) {
    let holder = kernels.get(kernel.id);
    const nvml = byPid.get(kernel.id);
    for (const g of kernel.gpu_memory?.per_gpu ?? []) {
      if (g.source !== 'kernel_report' || g.used_memory === null || nvml?.has(g.index)) {
        continue;
      }
      if (!holder) {
        holder = { kernelId: kernel.id, notebook: kernel.notebook, pids: [], total: 0, gpus: [] };
        kernels.set(kernel.id, holder);
      }
      // Its own report replaces NVML's figure of a process matched to it through that report.
      const row = { index: g.index, used: g.used_memory, ownReport: true };
      const at = holder.gpus.findIndex(r => r.index === g.index);
      holder.gpus.splice(at < 0 ? holder.gpus.length : at, at < 0 ? 0 : 1, row);
      holder.total = holder.gpus.reduce((sum, r) => sum + r.used, 0);
    }
    const why = kernel.gpu_memory?.unknown;
    if (why && holder) {
      holder.unknown = why;
    } else if (why) {
      unknown.push(kernel);
    }
  }
  const bySize = (a: IHolder, b: IHolder) => b.total - a.total;
  return { kernels: [...kernels.values()].sort(bySize), others: others.sort(bySize), unknown };
}

/**
 * `sorted` with the rows that `previous` (their keys) listed in its order, the rows it did not
 * list after them in `sorted`'s order; rows gone are dropped; `sorted` as it is without one.
 */
export function keepOrder<T>(
  sorted: readonly T[],
  previous: readonly string[] | null,
  keyOf: (row: T) => string
): T[] {
  if (!previous) {
    return [...sorted];
  }
  const place = new Map(previous.map((key, i) => [key, i]));
  const kept = sorted.filter(row => place.has(keyOf(row)));
  kept.sort((a, b) => (place.get(keyOf(a)) as number) - (place.get(keyOf(b)) as number));
  return [...kept, ...sorted.filter(row => !place.has(keyOf(row)))];
}

/** A list's rows in the order they were last shown, kept while asked to (see keepOrder). */
export class RowOrder<T> {
  /** Rows known by `keyOf`'s key. */
  constructor(private _keyOf: (row: T) => string) {}

  /** The rows to show now: in the order last shown while `hold`, else as sorted. */
  next(sorted: readonly T[], hold: boolean): T[] {
    const rows = keepOrder(sorted, hold ? this._shown : null, this._keyOf);
    this._shown = rows.map(this._keyOf);
    return rows;
  }

  private _shown: string[] = [];
}

/**
 * The per-GPU limit, in bytes, a kernel's figure is held to (as the enforcer holds it): NVML's
 * figure to the cap, its own report (no CUDA context in it) to the framework limit it started
 * with; null without a cap.
 */
export function limitFor(kernel: IKernel | undefined, ownReport: boolean): number | null {
  const applied = kernel?.applied;
  const cap = applied?.memory_limit_mb ?? kernel?.policy?.memory_limit_mb;
  if (typeof cap !== 'number') {
    return null;
  }
  const framework = applied?.framework_limit_mb;
  const mib = ownReport && typeof framework === 'number' ? framework : cap;
  return mib * MiB;
}

/** A kernel holding at least `percent` of its per-GPU memory limit on some GPU. */
export interface INearCap {
  kernel: IKernel;
  /** Bytes on the GPU nearest its limit. */
  used: number;
  /** The per-GPU limit in bytes that figure is held to (see `limitFor`). */
  limit: number;
}

/** The kernels at or above `percent`% of their memory limit. */
export function nearCap(
  snapshot: ISnapshot | null,
  kernels: readonly IKernel[],
  percent: number
): INearCap[] {
  if (percent <= 0) {
    return [];
  }
  const holders = groupHolders(snapshot, kernels).kernels;
  const found: INearCap[] = [];
  for (const kernel of kernels) {
    const holder = holders.find(h => h.kernelId === kernel.id);
    // The GPU nearest its limit; each figure against the limit it is held to.
    let nearest: INearCap | null = null;
    for (const g of holder?.gpus ?? []) {
      const limit = limitFor(kernel, !!g.ownReport);
      if (limit !== null && (!nearest || g.used / limit > nearest.used / nearest.limit)) {
        nearest = { kernel, used: g.used, limit };
      }
    }
    if (nearest && nearest.used >= (nearest.limit * percent) / 100) {
      found.push(nearest);
    }
  }
  return found;
}

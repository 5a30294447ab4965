/** Who holds GPU memory, from a snapshot's process lists (pure functions). */

import { IKernel, ISnapshot } from './types';

/** One kernel's (or one other process's) memory across the GPUs. */
export interface IHolder {
  /** null for a process no kernel of this server started. */
  kernelId: string | null;
  notebook: string | null;
  pids: number[];
  /** Bytes on all GPUs together. */
  total: number;
  /** Bytes per GPU, by GPU index. */
  gpus: { index: number; used: number }[];
}

/** Processes grouped by kernel (largest first), and the processes of no kernel. */
export function groupHolders(snapshot: ISnapshot | null): {
  kernels: IHolder[];
  others: IHolder[];
} {
  const kernels = new Map<string, IHolder>();
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
          gpus: [{ index: gpu.index, used }]
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
      holder.total += used;
      const row = holder.gpus.find(g => g.index === gpu.index);
      if (row) {
        row.used += used;
      } else {
        holder.gpus.push({ index: gpu.index, used });
      }
    }
  }
  const bySize = (a: IHolder, b: IHolder) => b.total - a.total;
  return { kernels: [...kernels.values()].sort(bySize), others: others.sort(bySize) };
}

/** A kernel holding at least `percent` of its per-GPU memory limit on some GPU. */
export interface INearCap {
  kernel: IKernel;
  /** Bytes on its fullest GPU. */
  used: number;
  /** Its per-GPU limit in bytes. */
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
  const holders = groupHolders(snapshot).kernels;
  const found: INearCap[] = [];
  for (const kernel of kernels) {
    const limitMb = kernel.applied?.memory_limit_mb ?? kernel.policy?.memory_limit_mb;
    const holder = holders.find(h => h.kernelId === kernel.id);
    if (typeof limitMb !== 'number' || !holder) {
      continue;
    }
    const used = Math.max(...holder.gpus.map(g => g.used));
    const limit = limitMb * 2 ** 20;
    if (used >= (limit * percent) / 100) {
      found.push({ kernel, used, limit });
    }
  }
  return found;
}

import { GiB, MiB } from '../format';
import { groupHolders, keepOrder, nearCap, RowOrder } from '../holders';
import { gpu, kernel, kernelHolding, perGpu, snapshot } from './fixtures';

const STALE = "GPU 1's process list could not be read (NVMLError_Timeout: Timeout)";

describe('groupHolders', () => {
  it('groups processes by kernel across GPUs, largest first, and keeps the others apart', () => {
    const snap = snapshot(1, [
      gpu(0, [
        [10, 100 * MiB, 'k1', 'a.ipynb'],
        [11, 50 * MiB, 'k1', 'a.ipynb'],
        [20, 400 * MiB, 'k2', 'b.ipynb'],
        [99, 30 * MiB, null, null]
      ]),
      gpu(1, [[10, 300 * MiB, 'k1', 'a.ipynb']])
    ]);
    const { kernels, others } = groupHolders(snap);
    expect(kernels.map(h => [h.kernelId, h.total / MiB])).toEqual([
      ['k1', 450],
      ['k2', 400]
    ]);
    expect(kernels[0].gpus).toEqual([
      { index: 0, used: 150 * MiB },
      { index: 1, used: 300 * MiB }
    ]);
    expect(kernels[0].pids).toEqual([10, 11]);
    expect(others).toEqual([
      {
        kernelId: null,
        notebook: null,
        pids: [99],
        total: 30 * MiB,
        gpus: [{ index: 0, used: 30 * MiB }]
      }
    ]);
  });

  it('marks the NVIDIA MPS server among the processes of no kernel', () => {
    const snap = snapshot(1, [
      gpu(0, [
        [7, 900 * MiB, null, null],
        [10, 100 * MiB, 'k1', 'a.ipynb'],
        [99, 30 * MiB, null, null]
      ])
    ]);
    snap.gpus[0].processes[0].mps = 'server';
    snap.gpus[0].processes[1].mps = 'client';
    const { kernels, others } = groupHolders(snap);
    expect(kernels.map(h => h.kernelId)).toEqual(['k1']);
    expect(others.map(h => [h.pids[0], h.mpsServer])).toEqual([
      [7, true],
      [99, undefined]
    ]);
  });

  it('copes with no snapshot and unknown memory', () => {
    expect(groupHolders(null)).toEqual({ kernels: [], others: [], unknown: [] });
    const { kernels } = groupHolders(snapshot(1, [gpu(0, [[1, null, 'k', null]])]));
    expect(kernels[0].total).toBe(0);
  });
});

describe('groupHolders with the kernels the server describes', () => {
  it("shows a kernel's own report where it is its figure, in place of the process matched by it", () => {
    // Given NVML's process on GPU 0 (3 GiB with the CUDA context) matched to k1 through its
    // report, and the server's figure for k1 there: its frameworks' own 2.5 GiB
    const snap = snapshot(1, [gpu(0, [[77, 3 * GiB, 'k1', 'a.ipynb', 'kernel_report']])]);
    const k1 = kernelHolding('k1', [perGpu(0, 2.5 * GiB, 'kernel_report')]);
    // When the holders are grouped with the kernels
    const { kernels, others } = groupHolders(snap, [k1]);
    // Then k1 holds its own report's figure, marked as such, and no process is left over
    expect(kernels).toEqual([
      {
        kernelId: 'k1',
        notebook: 'a.ipynb',
        pids: [77],
        total: 2.5 * GiB,
        gpus: [{ index: 0, used: 2.5 * GiB, ownReport: true }]
      }
    ]);
    expect(others).toEqual([]);
  });

  it('lists a kernel whose only figure is its own report, where NVML lists no process at all', () => {
    const k1 = kernelHolding('k1', [perGpu(1, GiB, 'kernel_report')]);
    const { kernels } = groupHolders(snapshot(1, [gpu(0), gpu(1)]), [k1]);
    expect(kernels).toEqual([
      {
        kernelId: 'k1',
        notebook: 'k1.ipynb',
        pids: [],
        total: GiB,
        gpus: [{ index: 1, used: GiB, ownReport: true }]
      }
    ]);
  });

  it("keeps NVML's figure by PID, and its own report on the other GPU of a mixed kernel", () => {
    // Given k1's PID on GPU 0 (NVML) and its report on GPU 1; GET kernels read before NVML
    // matched k1's PID on GPU 1 too
    const snap = snapshot(1, [
      gpu(0, [[10, GiB, 'k1', 'a.ipynb', 'pid']]),
      gpu(1, [[10, 2 * GiB, 'k1', 'a.ipynb', 'pid']])
    ]);
    const k1 = kernelHolding('k1', [perGpu(0, GiB, 'nvml'), perGpu(1, 512 * MiB, 'kernel_report')]);
    // Then NVML's figure by PID, the newer one, is what shows on both
    const [holder] = groupHolders(snap, [k1]).kernels;
    expect(holder.gpus).toEqual([
      { index: 0, used: GiB },
      { index: 1, used: 2 * GiB }
    ]);
    // And where NVML has no figure by PID, the report is the figure
    const mixed = snapshot(1, [gpu(0, [[10, GiB, 'k1', 'a.ipynb', 'pid']]), gpu(1)]);
    expect(groupHolders(mixed, [k1]).kernels[0].gpus).toEqual([
      { index: 0, used: GiB },
      { index: 1, used: 512 * MiB, ownReport: true }
    ]);
  });

  it('marks a kernel whose memory is unknown now; those without any figure are listed apart', () => {
    // Given GPU 1's process list stale: k1's kept figure is shown, k2 held nothing in it
    const snap = snapshot(1, [
      gpu(0),
      gpu(1, [[10, GiB, 'k1', 'a.ipynb', 'pid']], { processes_stale: 'NVMLError_Timeout' })
    ]);
    const k1 = kernelHolding('k1', [perGpu(1, GiB, 'nvml')], STALE);
    const k2 = kernelHolding('k2', [], STALE);
    const k3 = kernelHolding('k3', []);
    // When grouped
    const { kernels, unknown } = groupHolders(snap, [k1, k2, k3]);
    // Then k1's row keeps its last known figure and says why it is unknown
    expect(kernels.map(h => [h.kernelId, h.total, h.unknown])).toEqual([['k1', GiB, STALE]]);
    // And k2, with no figure at all, is listed apart; k3 (known, holding nothing) is not
    expect(unknown.map(k => k.id)).toEqual(['k2']);
    // And without the kernels, the rows are the processes' alone
    expect(groupHolders(snap).kernels[0].unknown).toBeUndefined();
  });
});

describe('nearCap', () => {
  it('finds kernels at the threshold of the limit they started with, on their fullest GPU', () => {
    const snap = snapshot(1, [
      gpu(0, [
        [1, 950 * MiB, 'k1', 'a.ipynb'],
        [2, 500 * MiB, 'k2', 'b.ipynb']
      ]),
      gpu(1, [[1, 10 * MiB, 'k1', 'a.ipynb']])
    ]);
    const kernels = [
      kernel('k1', { applied: { memory_limit_mb: 1000 } }),
      kernel('k2', { policy: { memory_limit_mb: 1000, sources: {} } }),
      kernel('k3', { applied: { memory_limit_mb: 1 } })
    ];
    const near = nearCap(snap, kernels, 90);
    expect(near.map(n => [n.kernel.id, n.used / MiB, n.limit / MiB])).toEqual([['k1', 950, 1000]]);
    expect(nearCap(snap, kernels, 50).map(n => n.kernel.id)).toEqual(['k1', 'k2']);
    expect(nearCap(snap, kernels, 0)).toEqual([]);
  });

  it('holds an own-report figure to the framework limit, as the enforcer does', () => {
    // Given a 4 GiB cap whose frameworks get 3.5 GiB, and a kernel reporting 3.3 GiB itself
    const applied = { memory_limit_mb: 4096, framework_limit_mb: 3584, context_reserve_mb: 512 };
    const k1 = kernelHolding('k1', [perGpu(0, 3.3 * GiB, 'kernel_report')], null, { applied });
    const near = nearCap(snapshot(1, [gpu(0)]), [k1], 90);
    // Then it is near its limit: 3.3 of the 3.5 GiB its frameworks may hold (94%)
    expect(near.map(n => [n.kernel.id, n.limit / MiB])).toEqual([['k1', 3584]]);
    // And NVML's figure of the same size is held to the cap (82%): not near
    const k2 = kernelHolding('k2', [perGpu(0, 3.3 * GiB, 'nvml')], null, { applied });
    const byPid = snapshot(1, [gpu(0, [[5, 3.3 * GiB, 'k2', 'k2.ipynb', 'pid']])]);
    expect(nearCap(byPid, [k2], 90)).toEqual([]);
  });
});

describe('keepOrder', () => {
  const key = (row: { id: string }) => row.id;
  const rows = (...ids: string[]) => ids.map(id => ({ id }));

  it('keeps the rows in the order they had, whatever their sorted order now', () => {
    // Given rows shown as a, b, c, now sorted c, a, b
    // When they keep their order / Then they stay a, b, c
    expect(keepOrder(rows('c', 'a', 'b'), ['a', 'b', 'c'], key).map(key)).toEqual(['a', 'b', 'c']);
  });

  it('puts the rows that appeared since after them, in their sorted order, and drops rows gone', () => {
    // Given rows shown as a, b, c; b gone, and d and e new, now sorted e, c, d, a
    const kept = keepOrder(rows('e', 'c', 'd', 'a'), ['a', 'b', 'c'], key);
    // Then a and c keep their places, and e and d follow in their sorted order
    expect(kept.map(key)).toEqual(['a', 'c', 'e', 'd']);
  });

  it('gives the sorted order as it is without an order to keep', () => {
    const sorted = rows('c', 'a');
    expect(keepOrder(sorted, null, key)).toEqual(sorted);
    expect(keepOrder(rows('c', 'a'), [], key).map(key)).toEqual(['c', 'a']);
  });
});

describe('RowOrder', () => {
  const key = (row: { id: string }) => row.id;
  const rows = (...ids: string[]) => ids.map(id => ({ id }));

  it('keeps the rows in place while held, and sorts them again once let go', () => {
    // Given rows shown sorted as a, b
    const order = new RowOrder(key);
    expect(order.next(rows('a', 'b'), false).map(key)).toEqual(['a', 'b']);
    // When the focus comes in and b grows past a / Then a and b stay where they were
    expect(order.next(rows('b', 'a'), true).map(key)).toEqual(['a', 'b']);
    // When c appears at the top and d below it / Then they come after, in their sorted order
    expect(order.next(rows('c', 'b', 'd', 'a'), true).map(key)).toEqual(['a', 'b', 'c', 'd']);
    // When d grows past c while still held / Then the new rows too stay where they were shown
    expect(order.next(rows('d', 'c', 'b', 'a'), true).map(key)).toEqual(['a', 'b', 'c', 'd']);
    // When the focus leaves / Then the rows are sorted again
    expect(order.next(rows('d', 'c', 'b', 'a'), false).map(key)).toEqual(['d', 'c', 'b', 'a']);
  });
});

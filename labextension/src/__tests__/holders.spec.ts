import { groupHolders, nearCap } from '../holders';
import { gpu, kernel, snapshot } from './fixtures';

const MiB = 2 ** 20;

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

  it('copes with no snapshot and unknown memory', () => {
    expect(groupHolders(null)).toEqual({ kernels: [], others: [] });
    const { kernels } = groupHolders(snapshot(1, [gpu(0, [[1, null, 'k', null]])]));
    expect(kernels[0].total).toBe(0);
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
});

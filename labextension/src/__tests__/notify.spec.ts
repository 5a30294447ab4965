import { Signal } from '@lumino/signaling';

import {
  capNotice,
  enforcementNotice,
  ENFORCEMENT_SCHEMA,
  GpuNotifier,
  INotice,
  placementNotice
} from '../notify';
import { MiB } from '../format';
import { IKernel } from '../types';
import { gpu, kernel, snapshot } from './fixtures';

const event = (extra: Record<string, unknown>) => ({
  schema_id: ENFORCEMENT_SCHEMA,
  kernel_id: 'abcdef123456',
  notebook: 'work/train.ipynb',
  rule: 'memory_cap',
  action: 'restart',
  dry_run: false,
  status: 'done',
  reason:
    'The kernel of work/train.ipynb held 9216 MiB on a GPU, over its cap of 8192 MiB, for 31 s; the kernel was restarted.',
  ...extra
});

describe('enforcementNotice', () => {
  it("shows the server's sentence: whose kernel, what it held, what was done", () => {
    expect(enforcementNotice(event({}))).toEqual({
      type: 'error',
      message:
        'The kernel of work/train.ipynb held 9216 MiB on a GPU, over its cap of 8192 MiB, for 31 s; the kernel was restarted.',
      notebook: 'work/train.ipynb'
    });
  });

  it('is a warning for a dry run or a warn action', () => {
    expect(enforcementNotice(event({ dry_run: true }))?.type).toBe('warning');
    const reason =
      'Kernel abcdef12 was idle for 600 s while holding 900 MiB of GPU memory; warning only (dry run).';
    const idle = enforcementNotice(event({ action: 'warn', rule: 'idle', notebook: null, reason }));
    expect(idle?.message).toBe(reason);
  });

  it('ignores other events', () => {
    expect(enforcementNotice({ schema_id: 'https://events.jupyter.org/x' })).toBeNull();
  });
});

describe('GpuNotifier', () => {
  it('notifies once when a kernel nears its limit, again after it went well below', () => {
    // Given a kernel with a 1000 MiB limit
    const owner = {};
    const stream = { changed: new Signal<object, void>(owner), snapshot: snapshot(1, []) };
    const kernels = {
      kernels: [kernel('k1', { applied: { memory_limit_mb: 1000 } })],
      changed: new Signal<object, void>(owner)
    };
    const events = { stream: new Signal<object, any>(owner) };
    const notices: INotice[] = [];
    const notifier = new GpuNotifier({
      events: events as any,
      stream: stream as any,
      kernels: kernels as any,
      openKernels: () => [],
      notify: notice => notices.push(notice),
      enforcement: true,
      capPercent: 90
    });
    const holding = (mib: number) => {
      stream.snapshot = snapshot(1, [gpu(0, [[1, mib * MiB, 'k1', 'k1.ipynb']])]);
      stream.changed.emit();
    };
    // When it goes over 90%, stays there, dips a little, goes well below and back up
    for (const mib of [950, 960, 850, 950, 700, 950]) {
      holding(mib);
    }
    // Then the owner was told twice
    expect(notices.map(n => n.message)).toEqual([
      capNotice({ kernel: kernels.kernels[0], used: 950 * MiB, limit: 1000 * MiB }).message,
      capNotice({ kernel: kernels.kernels[0], used: 950 * MiB, limit: 1000 * MiB }).message
    ]);
    expect(notices[0].message).toBe(
      'k1.ipynb uses 950.0 MiB of its 1000.0 MiB GPU memory limit (95%). Past the limit it gets out-of-memory errors.'
    );
    // And enforcement events become notices unless turned off
    events.stream.emit(event({}));
    notifier.enforcement = false;
    events.stream.emit(event({}));
    expect(notices).toHaveLength(3);
    notifier.dispose();
  });
});

const NO_MONITORING =
  'no GPU monitoring (NVML Shared Library Not Found): this kernel runs on the CPU only';

/** A kernel that asked for a GPU by placement and got `chosen`, started at `started`. */
const placed = (id: string, chosen: string[], started = 100, strategy: string | null = null) =>
  kernel(id, {
    applied: {
      devices: chosen,
      started,
      placement: {
        strategy,
        requested: 1,
        chosen,
        reason: strategy ? 'asked for 1 GPU(s), 0 available' : NO_MONITORING
      }
    }
  });

describe('placementNotice', () => {
  it("warns with the server's reason when a kernel got no GPU", () => {
    expect(placementNotice(placed('k1', []))).toEqual({
      type: 'warning',
      message: `k1.ipynb: ${NO_MONITORING}.`,
      notebook: 'k1.ipynb'
    });
    expect(placementNotice(placed('k1', [], 100, 'most-free'))?.message).toBe(
      'k1.ipynb: asked for 1 GPU(s), 0 available; this kernel runs on the CPU only.'
    );
  });

  it('says nothing of a kernel placed on a GPU or that chose its devices itself', () => {
    expect(placementNotice(placed('k1', ['GPU-0']))).toBeNull();
    expect(placementNotice(kernel('k1', { applied: { devices: [] } }))).toBeNull();
    expect(placementNotice(kernel('k1'))).toBeNull();
  });
});

describe('GpuNotifier placement', () => {
  it("notifies once per start of an open notebook's kernel that runs on the CPU only", () => {
    // Given the open notebook's kernel k1, and k2 of a notebook not open here
    const owner = {};
    const stream = { changed: new Signal<object, void>(owner), snapshot: null };
    const kernels = { kernels: [] as IKernel[], changed: new Signal<object, void>(owner) };
    const notices: INotice[] = [];
    const notifier = new GpuNotifier({
      events: { stream: new Signal<object, any>(owner) } as any,
      stream: stream as any,
      kernels: kernels as any,
      openKernels: () => ['k1'],
      notify: notice => notices.push(notice),
      enforcement: true,
      capPercent: 90
    });
    const refreshed = (...list: IKernel[]) => {
      kernels.kernels = list;
      kernels.changed.emit();
    };
    // When both start without a GPU, are refreshed again, then k1 restarts
    refreshed(placed('k1', []), placed('k2', []));
    refreshed(placed('k1', []), placed('k2', []));
    refreshed(placed('k1', [], 200), placed('k2', []));
    // Then k1's owner was told at each start, and of nothing else
    expect(notices.map(n => n.message)).toEqual([
      `k1.ipynb: ${NO_MONITORING}.`,
      `k1.ipynb: ${NO_MONITORING}.`
    ]);
    // And a kernel placed on a GPU, or after dispose, tells nothing
    refreshed(placed('k1', ['GPU-0'], 300));
    notifier.dispose();
    refreshed(placed('k1', [], 400));
    expect(notices).toHaveLength(2);
  });
});

import * as React from 'react';

import { GiB } from '../format';
import { describeEnforcement, EnforcementTag, perGpuWords, RunningCap } from '../kernelmemory';
import { FOLLOW_INTERVAL, followStream, KernelsModel } from '../kernels';
import { statusLine } from '../statustext';
import { GpuStreamModel } from '../stream';
import { IKernelEnforcement, IStreamKernel } from '../types';
import {
  fakeApi,
  gpu,
  HELD_BY_SETTINGS,
  kernel,
  kernelHolding,
  NO_CAP,
  perGpu,
  snapshot
} from './fixtures';

// react-dom ships no types here; its server renderer turns an element into the HTML it makes.
const { renderToStaticMarkup } = jest.requireActual('react-dom/server') as {
  renderToStaticMarkup: (element: React.ReactElement) => string;
};

/** The text a page shows for some HTML (tags dropped, entities read). */
function text(markup: string): string {
  return markup
    .replace(/<[^>]+>/g, '')
    .replace(/&#x27;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, '&');
}

// The reasons as the server words them (server/hardcaps/framework.py, the MPS mechanism).
const SETTINGS = HELD_BY_SETTINGS;
const MPS_LIFTABLE =
  'MPS limits this kernel in the driver, but code in the kernel can lift them through its ' +
  'own environment before CUDA starts';

const COOPERATIVE: IKernelEnforcement = {
  level: 'framework',
  mechanism: 'framework_settings',
  reason: SETTINGS
};
const MPS: IKernelEnforcement = { level: 'framework', mechanism: 'mps', reason: MPS_LIFTABLE };
const HARD: IKernelEnforcement = { level: 'driver', mechanism: 'nvml_memory_limit', reason: null };
const NONE: IKernelEnforcement = { level: 'none', mechanism: null, reason: NO_CAP };

describe('describeEnforcement', () => {
  it('calls each level by its name in the UI, and says what holds the cap and why it is not hard', () => {
    expect(describeEnforcement(HARD)).toEqual({
      label: 'hard cap',
      why:
        "Hard cap, held by an NVML memory limit on the kernel's cgroup, set in the driver: " +
        'the driver refuses any allocation past it, whatever the framework.'
    });
    expect(describeEnforcement(COOPERATIVE)).toEqual({
      label: 'cooperative',
      why:
        'Cooperative cap, held by the framework settings (TensorFlow, PyTorch, JAX). ' +
        `Not a hard cap: ${SETTINGS}.`
    });
    expect(describeEnforcement(MPS)).toEqual({
      label: 'cooperative',
      why: `Cooperative cap, held by an MPS memory limit, set in the driver. Not a hard cap: ${MPS_LIFTABLE}.`
    });
    // "no cap" is not said twice
    expect(describeEnforcement(NONE)).toEqual({
      label: 'no cap',
      why: 'No cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb.'
    });
    const other = { level: 'none' as const, mechanism: null, reason: 'a R kernel: no setting' };
    expect(describeEnforcement(other).why).toBe('No cap: a R kernel: no setting.');
  });
});

describe('the enforcement tag', () => {
  it('shows the level, with what holds the cap and why as its tooltip and for screen readers', () => {
    const markup = renderToStaticMarkup(
      React.createElement(EnforcementTag, { enforcement: MPS, id: 'e1' })
    );
    const why = describeEnforcement(MPS).why;
    expect(markup).toContain('id="e1"');
    expect(text(markup.match(/title="([^"]*)"/)?.[1] ?? '')).toBe(why);
    // Sighted users read the label; a screen reader the sentence (which starts with it)
    expect(markup).toContain('<span aria-hidden="true">cooperative</span>');
    expect(text(markup)).toBe(`cooperative${why}`);
  });
});

describe('the running kernel in the policy section', () => {
  it('says how its cap is enforced beside the cap, and that it has none', () => {
    const capped = kernel('k1', {
      applied: { memory_limit_mb: 4096 },
      enforcement: COOPERATIVE
    });
    const markup = renderToStaticMarkup(React.createElement(RunningCap, { kernel: capped }));
    expect(text(markup)).toContain('Running kernel: cap 4.0 GiB per GPU. Enforcement: cooperative');
    expect(markup).toContain('id="jp-tfgpu-enforcement-running"');
    const none = renderToStaticMarkup(
      React.createElement(RunningCap, { kernel: kernel('k2', { enforcement: NONE }) })
    );
    expect(text(none)).toMatch(/^Running kernel: no capNo cap: its policy sets no memory_limit_mb/);
  });
});

describe("the status bar's title", () => {
  const status = { backend: 'simulated', available: true, reason: null } as never;

  it("says how the kernel's cap is enforced, and why it is not hard", () => {
    const k = kernelHolding('k1', [perGpu(0, GiB, 'nvml')], null, {
      applied: { memory_limit_mb: 4096 },
      enforcement: MPS
    });
    const line = statusLine({
      status,
      snapshot: snapshot(1, [gpu(0, [[10, GiB, 'k1', 'k1.ipynb']])]),
      error: null,
      kernelId: 'k1',
      kernel: k,
      choice: { mode: 'kernel', indices: [] }
    });
    const [first, second] = line.tooltip.split('\n');
    expect(first).toMatch(/; its limit is 4\.0 GiB per GPU, a cooperative cap \(MPS\)\.$/);
    expect(second).toBe(describeEnforcement(MPS).why);
    // The item's name says the level too (its first line)
    expect(line.label).toContain('a cooperative cap (MPS)');
  });

  it('says a kernel without a cap has none', () => {
    const k = kernelHolding('k1', [perGpu(0, GiB, 'nvml')], null, { enforcement: NONE });
    const line = statusLine({
      status,
      snapshot: snapshot(1, [gpu(0, [[10, GiB, 'k1', 'k1.ipynb']])]),
      error: null,
      kernelId: 'k1',
      kernel: k,
      choice: { mode: 'kernel', indices: [] }
    });
    expect(line.tooltip.split('\n')[0]).toMatch(/; it has no cap\.$/);
  });
});

describe('the kernels model following a change of level on the stream', () => {
  // Fake timers: the models' polls and the follower run on jest's clock.
  let model: KernelsModel;
  let stream: GpuStreamModel;
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    stream.dispose();
    model.dispose();
    jest.useRealTimers();
  });

  const summary = (extra: Partial<IStreamKernel> = {}): IStreamKernel => ({
    id: 'k1',
    notebook: 'k1.ipynb',
    execution_state: 'idle',
    gpu_memory: GiB,
    gpu_memory_source: 'nvml',
    gpu_memory_unknown: null,
    memory_limit_mb: 4096,
    restart_required: false,
    enforcement: 'driver',
    ...extra
  });

  it('re-reads GET kernels soon for the reason when the level changed', async () => {
    // Given k1 read with a hard cap, and the panel streaming live
    const api = fakeApi({
      kernels: {
        kernels: [kernelHolding('k1', [perGpu(0, GiB, 'nvml')], null, { enforcement: HARD })]
      },
      status: { backend: 'simulated', available: true, reason: null, simulated: true },
      'gpus/history': { seconds: 300, interval: 1, simulated: true, timestamps: [], gpus: [] },
      gpus: snapshot(5, [gpu(0)])
    });
    model = new KernelsModel(api);
    stream = new GpuStreamModel({ api, interval: 5, historySeconds: 300 });
    followStream(model, stream);
    stream.live = true;
    await jest.advanceTimersByTimeAsync(10);
    const reads = () => api.calls.filter(c => c === 'GET kernels').length;
    api.sockets[0].send({ ...snapshot(1, [gpu(0)]), kernels: [summary()] });
    await jest.advanceTimersByTimeAsync(FOLLOW_INTERVAL + 10);
    const before = reads();

    // When the stream says its level is framework now (its cap was lowered while it ran)
    api.sockets[0].send({
      ...snapshot(2, [gpu(0)]),
      kernels: [summary({ enforcement: 'framework' })]
    });
    await jest.advanceTimersByTimeAsync(FOLLOW_INTERVAL + 10);

    // Then the kernels are read again within the follow interval, for the reason GET has
    expect(reads()).toBe(before + 1);
    // And a message that says the same level again costs no read
    api.sockets[0].send({
      ...snapshot(3, [gpu(0)]),
      kernels: [summary({ enforcement: 'framework' })]
    });
    await jest.advanceTimersByTimeAsync(FOLLOW_INTERVAL + 10);
    expect(reads()).toBe(before + 1);
  });
});

describe('a kernel whose GPUs hold its cap differently', () => {
  it('says how each GPU holds it, by index, after the sentence', () => {
    // Given GPU 0 under an MPS limit and GPU 1 under framework settings only
    const k = kernel('k1', {
      applied: {
        memory_limit_mb: 4096,
        enforcement: {
          ...MPS,
          gpus: [
            { gpu: 'GPU-0', ...MPS },
            { gpu: '1', ...COOPERATIVE }
          ]
        }
      },
      enforcement: MPS
    });
    const gpus = [gpu(0), gpu(1)];
    // Then the per-GPU words name each GPU by its index
    expect(perGpuWords(k, gpus)).toBe(
      'Per GPU: GPU 0 cooperative (MPS), GPU 1 cooperative (framework settings).'
    );
    // And the tag's tooltip ends with them
    const markup = renderToStaticMarkup(
      React.createElement(EnforcementTag, { enforcement: MPS, perGpu: perGpuWords(k, gpus) })
    );
    expect(text(markup.match(/title="([^"]*)"/)?.[1] ?? '')).toBe(
      `${describeEnforcement(MPS).why} Per GPU: GPU 0 cooperative (MPS), GPU 1 cooperative ` +
        '(framework settings).'
    );
    // And GPUs held alike add nothing
    const alike = kernel('k2', {
      applied: { memory_limit_mb: 4096, enforcement: { ...MPS, gpus: [{ gpu: 'GPU-0', ...MPS }] } }
    });
    expect(perGpuWords(alike, gpus)).toBe('');
  });
});

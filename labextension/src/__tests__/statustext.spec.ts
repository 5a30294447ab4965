import { GiB, MiB } from '../format';
import { statusLine, IStatusInput } from '../statustext';
import { IStatus } from '../types';
import {
  CONTEXT_RESERVE,
  HARD_CAPS_OFF,
  gpu,
  kernel,
  kernelHolding,
  perGpu,
  SAMPLER,
  snapshot
} from './fixtures';

const available: IStatus = {
  backend: 'simulated',
  configured_backend: 'simulated',
  available: true,
  reason: null,
  simulated: true,
  device_count: 2,
  sample_interval: 1,
  sampler: SAMPLER,
  versions: {},
  context_reserve: CONTEXT_RESERVE,
  hard_caps: HARD_CAPS_OFF
};

/** Two 16 GiB GPUs with 1 GiB used each; kernel k1 holds 1.2 GiB on GPU 0. */
const twoGpus = snapshot(1, [gpu(0, [[10, 1.2 * GiB, 'k1', 'a.ipynb']]), gpu(1)]);

const input = (extra: Partial<IStatusInput>): IStatusInput => ({
  status: available,
  snapshot: twoGpus,
  error: null,
  kernelId: 'k1',
  kernel: kernel('k1'),
  choice: { mode: 'kernel', indices: [] },
  ...extra
});

describe('statusLine', () => {
  it("shows the memory this notebook's kernel holds, with the GPUs' totals in the tooltip", () => {
    const line = statusLine(input({}));
    expect(line.text).toBe('GPU: 1.2 GiB');
    expect(line.tooltip.split('\n')).toEqual([
      "This notebook's kernel holds 1.2 GiB of GPU memory (GPU 0: 1.2 GiB); it has no cap.",
      'No cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb.',
      'GPU 0 Simulated GPU 16GB: 40% busy, memory 1.0 / 16.0 GiB, 50 \u00b0C',
      'GPU 1 Simulated GPU 16GB: 40% busy, memory 1.0 / 16.0 GiB, 50 \u00b0C',
      'Click for the GPU panel.'
    ]);
    expect(line.simulated).toBe(true);
    expect(line.warning).toBe(false);
  });

  it('shows the limit the kernel started with, not a policy change still waiting', () => {
    // Given a kernel started with a 4 GiB limit whose notebook now asks for 8 GiB
    const capped = kernel('k1', {
      applied: { memory_limit_mb: 4096 },
      policy: { memory_limit_mb: 8192, sources: {} }
    });
    const line = statusLine(input({ kernel: capped }));
    expect(line.text).toBe('GPU: 1.2 / 4.0 GiB limit');
    expect(line.tooltip).toContain('its limit is 4.0 GiB per GPU');
    // And before it started, the policy's limit
    const waiting = kernel('k1', { policy: { memory_limit_mb: 8192, sources: {} } });
    expect(statusLine(input({ kernel: waiting })).text).toBe('GPU: 1.2 / 8.0 GiB limit');
  });

  it('sums a kernel on several GPUs, the per-GPU limit then only in the tooltip', () => {
    const spread = snapshot(1, [
      gpu(0, [[10, 512 * MiB, 'k1', 'a.ipynb']]),
      gpu(1, [[11, 512 * MiB, 'k1', 'a.ipynb']])
    ]);
    const capped = kernel('k1', { applied: { memory_limit_mb: 4096 } });
    const line = statusLine(input({ snapshot: spread, kernel: capped }));
    expect(line.text).toBe('GPU: 1.0 GiB');
    expect(line.tooltip).toContain('(GPU 0: 512.0 MiB, GPU 1: 512.0 MiB); its limit is 4.0 GiB');
  });

  it('says 0 B for a kernel that holds nothing, and a dash without a notebook kernel', () => {
    expect(statusLine(input({ kernelId: 'k2', kernel: kernel('k2') })).text).toBe('GPU: 0 B');
    const none = statusLine(input({ kernelId: null, kernel: undefined }));
    expect(none.text).toBe('GPU: \u2013');
    expect(none.tooltip).toContain('No notebook with a running kernel');
    expect(none.tooltip).toContain('GPU 1 Simulated GPU 16GB');
  });

  it("says when the figure is the kernel's own report, held to the limit its frameworks got", () => {
    // Given a kernel in a container: NVML lists no process of it; it reports 1.5 GiB on GPU 1
    const applied = { memory_limit_mb: 4096, framework_limit_mb: 3584, context_reserve_mb: 512 };
    const boxed = kernelHolding('k2', [perGpu(1, 1.5 * GiB, 'kernel_report')], null, { applied });
    const line = statusLine(input({ kernelId: 'k2', kernel: boxed }));
    // Then it shows that figure against the framework limit, and the tooltip says what it is
    expect(line.text).toBe('GPU: 1.5 / 3.5 GiB limit');
    expect(line.tooltip.split('\n')[0]).toBe(
      "This notebook's kernel holds 1.5 GiB of GPU memory (GPU 1: 1.5 GiB, its own report); " +
        'its limit is 3.5 GiB per GPU, what its frameworks get under its 4.0 GiB cap, a ' +
        'cooperative cap (framework settings).'
    );
    expect(line.tooltip.split('\n')[2]).toBe(
      "Own report: the kernel's frameworks' own figure, sent from inside the kernel; it " +
        'leaves out the CUDA context.'
    );
    expect(line.warning).toBe(false);
  });

  it('says when the memory is unknown now: the last known figure marked stale, or none', () => {
    const why = "GPU 0's process list could not be read (NVMLError_Timeout: Timeout)";
    // Given the kernel's figure kept from GPU 0's last process list
    const stale = kernelHolding('k1', [perGpu(0, 1.2 * GiB, 'nvml')], why);
    const line = statusLine(input({ kernel: stale }));
    // Then the last known figure is marked stale, with a warning and the reason first
    expect(line.text).toBe('GPU: 1.2 GiB (stale)');
    expect(line.warning).toBe(true);
    expect(line.tooltip.split('\n').slice(0, 2)).toEqual([
      `This notebook's kernel's GPU memory is unknown now: ${why}.`,
      'Last known: 1.2 GiB (GPU 0: 1.2 GiB).'
    ]);
    expect(line.label).toBe(
      `GPU: 1.2 GiB (stale). This notebook's kernel's GPU memory is unknown now: ${why}.`
    );
    // And a kernel whose own report stopped has no figure: unknown, never 0 B
    const silent = 'its own GPU memory report, the only figure for it on GPU 1, stopped arriving';
    const gone = statusLine(input({ kernelId: 'k2', kernel: kernelHolding('k2', [], silent) }));
    expect(gone.text).toBe('GPU: unknown');
    expect(gone.tooltip.split('\n')[0]).toBe(
      `This notebook's kernel's GPU memory is unknown now: ${silent}.`
    );
    expect(gone.warning).toBe(true);
  });

  it('says CPU only, and why, for a kernel placed on no GPU', () => {
    const reason = 'no GPU monitoring (Driver Not Loaded): this kernel runs on the CPU only';
    const cpu = kernel('k2', {
      applied: {
        devices: [],
        placement: { strategy: null, requested: 1, chosen: [], reason }
      }
    });
    const line = statusLine(input({ kernelId: 'k2', kernel: cpu }));
    expect(line.text).toBe('GPU: CPU only');
    expect(line.tooltip.split('\n')[0]).toBe(reason);
  });

  it("shows the machine's figures when the settings ask for all GPUs or chosen ones", () => {
    const all = statusLine(input({ choice: { mode: 'all', indices: [] } }));
    expect(all.text).toBe('GPU 0,1: 40% \u00b7 2.0 / 32.0 GiB');
    const one = statusLine(input({ choice: { mode: 'kernel', indices: [1] } }));
    expect(one.text).toBe('GPU 1: 40% \u00b7 1.0 / 16.0 GiB');
  });

  it('says what its numbers are, first in the tooltip and in the label a screen reader reads', () => {
    // Given each way the item can show figures
    const kernelLine = statusLine(input({}));
    const all = statusLine(input({ choice: { mode: 'all', indices: [] } }));
    const chosen = statusLine(input({ choice: { mode: 'kernel', indices: [1] } }));
    // Then the label is the text followed by the tooltip's first line, which explains it
    expect(kernelLine.label).toBe(
      "GPU: 1.2 GiB. This notebook's kernel holds 1.2 GiB of GPU memory (GPU 0: 1.2 GiB); " +
        'it has no cap.'
    );
    expect(all.tooltip.split('\n')[0]).toBe(
      'All GPUs: mean utilization \u00b7 memory used / total'
    );
    expect(all.label).toBe(
      'GPU 0,1: 40% \u00b7 2.0 / 32.0 GiB. All GPUs: mean utilization \u00b7 memory used / total'
    );
    expect(chosen.tooltip.split('\n')[0]).toBe(
      'GPUs chosen in the settings: mean utilization \u00b7 memory used / total'
    );
    expect(chosen.tooltip.split('\n')[1]).toMatch(/^GPU 1 Simulated GPU 16GB: 40% busy/);
  });

  it('says n/a with the reason when there is no GPU data; a named backend failing warns', () => {
    const failed: IStatus = {
      ...available,
      backend: 'none',
      configured_backend: 'nvml',
      available: false,
      reason: 'Driver Not Loaded',
      retry_in: 30,
      simulated: false
    };
    const line = statusLine(input({ status: failed, snapshot: null }));
    expect(line).toEqual({
      text: 'GPU: n/a',
      label:
        'GPU: n/a. GPU monitoring failed: This server is set to read its GPUs with NVML, which ' +
        'did not start: Driver Not Loaded. It tries again in 30 s.',
      tooltip:
        'GPU monitoring failed: This server is set to read its GPUs with NVML, which did not ' +
        'start: Driver Not Loaded. It tries again in 30 s.',
      simulated: false,
      warning: true
    });
    const calm = statusLine(input({ status: { ...failed, configured_backend: 'auto' } }));
    expect(calm.warning).toBe(false);
    expect(calm.tooltip).toBe('No GPU on this server: Driver Not Loaded');
  });

  it('says when it is waiting or cannot reach the server', () => {
    expect(statusLine(input({ status: null })).text).toBe('GPU: \u2013');
    expect(statusLine(input({ snapshot: null })).tooltip).toBe('Waiting for the first sample');
    expect(statusLine(input({ error: 'Bad Gateway' }))).toMatchObject({
      text: 'GPU: error',
      tooltip: 'Bad Gateway'
    });
  });
});

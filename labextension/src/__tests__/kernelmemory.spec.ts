import * as React from 'react';

import { GiB } from '../format';
import { GpuCard } from '../gpucard';
import { groupHolders, IHolder } from '../holders';
import {
  describeCap,
  HolderFigure,
  HolderGpus,
  MpsServerHolder,
  OWN_REPORT,
  RunningCap,
  UnknownKernels,
  UnknownNote
} from '../kernelmemory';
import { KernelsModel } from '../kernels';
import { fakeApi, gpu, kernel, kernelHolding, perGpu, snapshot } from './fixtures';

// react-dom ships no types here; its server renderer turns an element into the HTML it makes.
const { renderToStaticMarkup } = jest.requireActual('react-dom/server') as {
  renderToStaticMarkup: (element: React.ReactElement) => string;
};

const STALE = "GPU 0's process list could not be read (NVMLError_Timeout: Timeout)";

function html(element: React.ReactElement): string {
  return renderToStaticMarkup(element);
}

/** The text a page shows for some HTML (tags dropped, entities read). */
function text(markup: string): string {
  return markup
    .replace(/<[^>]+>/g, '')
    .replace(/&#x27;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, '&');
}

const holder = (extra: Partial<IHolder>): IHolder => ({
  kernelId: 'k1',
  notebook: 'a.ipynb',
  pids: [10],
  total: 1.5 * GiB,
  gpus: [{ index: 0, used: 1.5 * GiB }],
  ...extra
});

describe('a kernel row in the holders list', () => {
  it("shows NVML's figure as it is, with nothing added", () => {
    const row = holder({});
    expect(html(React.createElement(HolderFigure, { holder: row }))).toBe(
      '<span class="jp-tfgpu-Holder-memory">1.5 GiB</span>'
    );
    expect(text(html(React.createElement(HolderGpus, { holder: row })))).toBe('GPU 0');
  });

  it('tags the GPUs whose figure is its own report, the tag saying what that means', () => {
    const row = holder({
      gpus: [
        { index: 0, used: GiB },
        { index: 1, used: 0.5 * GiB, ownReport: true }
      ]
    });
    const markup = html(React.createElement(HolderGpus, { holder: row }));
    expect(text(markup)).toBe('GPU 0, GPU 1 own report');
    expect(text(markup.match(/title="([^"]*)"/)?.[1] ?? '')).toBe(OWN_REPORT);
    expect(markup.match(/jp-tfgpu-Tag/g)).toHaveLength(1);
  });

  it('marks the last known figure stale and says why the memory is unknown', () => {
    // The figure: stale, and said to be the last known one to screen readers too
    const figure = html(React.createElement(HolderFigure, { holder: holder({ unknown: STALE }) }));
    expect(figure).toContain('jp-tfgpu-mod-stale');
    expect(text(figure)).toBe('last known 1.5 GiB');
    // The note: a warning badge, and the reason both as text and as the tooltip
    const note = html(React.createElement(UnknownNote, { reason: STALE }));
    expect(note).toContain('jp-tfgpu-Badge jp-tfgpu-mod-unknown');
    expect(text(note)).toBe(`GPU memory unknown${STALE}`);
    expect(text(note)).not.toContain('&');
    expect(note.match(/title="([^"]*)"/g)).toEqual([`title="${STALE.replace(/'/g, '&#x27;')}"`]);
  });

  it('lists kernels with no figure at all in one item, each reason once', () => {
    const silent = 'its own GPU memory report, the only figure for it on GPU 1, stopped arriving';
    const kernels = [
      kernelHolding('k2', [], STALE),
      kernelHolding('k3', [], STALE, { notebook: 'dir/c.ipynb' }),
      kernelHolding('k4', [], silent, { notebook: null })
    ];
    const item = text(html(React.createElement(UnknownKernels, { kernels })));
    expect(item).toBe(`k2.ipynb, c.ipynb, Kernel k4GPU memory unknown${STALE}; ${silent}`);
    expect(html(React.createElement(UnknownKernels, { kernels: [] }))).toBe('');
  });

  it("names the MPS server's process, its GPU and PID, and says its figure may include the kernels'", () => {
    const server = holder({ kernelId: null, notebook: null, pids: [7], mpsServer: true });
    expect(text(html(React.createElement(MpsServerHolder, { holder: server })))).toBe(
      'MPS server1.5 GiBNVIDIA MPS on GPU 0 (PID 7): kernels run their GPU work through it; ' +
        'its figure may include theirs.'
    );
  });
});

describe('describeCap', () => {
  const cap = { memory_limit_mb: 4096, framework_limit_mb: 3584, context_reserve_mb: 512 };

  it('says what the frameworks get and how the context reserve was found', () => {
    const measured = describeCap({
      ...cap,
      context_reserve_source: 'measured',
      context_reserve_measured_on: 'NVIDIA H200, driver 580.159.04'
    });
    expect(measured).toMatchObject({
      text:
        'Running kernel: cap 4.0 GiB per GPU (frameworks get 3.5 GiB; 512 MiB left for the ' +
        'CUDA context, measured on NVIDIA H200, driver 580.159.04).',
      warning: null
    });
    expect(measured?.title).toMatch(/^A cap is what NVML \(and nvidia-smi\) shows for the kernel/);
    expect(measured?.title).toMatch(/measured on this server for these GPU models and driver\.$/);
    const starting = describeCap({ ...cap, context_reserve_source: 'starting value' });
    expect(starting?.text).toBe(
      'Running kernel: cap 4.0 GiB per GPU (frameworks get 3.5 GiB; 512 MiB left for the ' +
        'CUDA context, starting value).'
    );
    expect(starting?.title).toMatch(/these GPUs have not all been measured on this server yet\.$/);
    const simulated = describeCap({
      memory_limit_mb: 4096,
      framework_limit_mb: 4096,
      context_reserve_mb: 0,
      context_reserve_source: 'simulated'
    });
    expect(simulated?.text).toBe(
      'Running kernel: cap 4.0 GiB per GPU (simulated GPUs: no CUDA context, frameworks get all of it).'
    );
  });

  it('warns when the cap leaves no room for the context', () => {
    const note =
      'memory_limit_mb 300 is at or below the 550 MiB this GPU needs for the CUDA context and ' +
      'libraries alone: any GPU use passes the cap';
    const said = describeCap({
      memory_limit_mb: 300,
      framework_limit_mb: 300,
      context_reserve_mb: 550,
      context_reserve_source: 'starting value',
      memory_limit_note: note
    });
    expect(said).toMatchObject({
      text: 'Running kernel: cap 300 MiB per GPU.',
      warning: `The running kernel's cap: ${note}.`
    });
    const markup = html(
      React.createElement(RunningCap, {
        kernel: kernel('k1', { applied: { memory_limit_mb: 300, memory_limit_note: note } })
      })
    );
    expect(markup).toContain('class="jp-tfgpu-Note jp-mod-warning" role="status"');
  });

  it('says only the cap for a kernel that started before framework limits, no cap without one', () => {
    expect(describeCap({ memory_limit_mb: 1024 })?.text).toBe(
      'Running kernel: cap 1.0 GiB per GPU.'
    );
    expect(describeCap({ memory_growth: true })).toBeNull();
    expect(describeCap(null)).toBeNull();
    // Without a cap, the line says only that: "no cap", why in its tooltip
    const uncapped = html(React.createElement(RunningCap, { kernel: kernel('k1') }));
    expect(text(uncapped)).toMatch(/^Running kernel: no capNo cap: /);
  });
});

describe('a GPU card', () => {
  const card = (extra: Parameters<typeof gpu>[2]) =>
    html(
      React.createElement(GpuCard, {
        gpu: gpu(0, [], extra),
        simulated: false,
        seconds: 60
      })
    );

  it('says when its process list is not current, and why', () => {
    const markup = card({ processes_stale: 'NVMLError_Timeout: Timeout' });
    expect(text(markup)).toContain('Process list not current: NVMLError_Timeout: Timeout');
    expect(card({ processes_stale: null })).not.toContain('Process list');
    expect(card({})).not.toContain('Process list');
  });
});

describe('the holders list following the kernels model', () => {
  // Fake timers: the kernels model's background poll runs on jest's clock.
  let model: KernelsModel;
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    model.dispose();
    jest.useRealTimers();
  });

  it('marks a kernel unknown from the refresh that says so, and clears it at the one after', async () => {
    // Given a server whose GPU 0 process list fails for one refresh of GET kernels
    const answers = [null, STALE, null];
    let reads = 0;
    const api = fakeApi({
      kernels: () => {
        const unknown = answers[Math.min(reads++, answers.length - 1)];
        return { kernels: [kernelHolding('k1', [perGpu(0, GiB, 'nvml')], unknown)] };
      }
    });
    const snap = snapshot(1, [gpu(0, [[10, GiB, 'k1', 'k1.ipynb', 'pid']])]);
    model = new KernelsModel(api);
    model.active = true; // the panel is open: a read every 5 s
    const rows = () => groupHolders(snap, model.kernels).kernels.map(h => h.unknown ?? null);

    // When the first read comes / Then the figure is known
    await jest.advanceTimersByTimeAsync(10);
    expect(rows()).toEqual([null]);
    // When the next read says it is unknown / Then the row says why
    await jest.advanceTimersByTimeAsync(5_000);
    expect(rows()).toEqual([STALE]);
    // When the one after says it is known again / Then the mark goes
    await jest.advanceTimersByTimeAsync(5_000);
    expect(rows()).toEqual([null]);
  });
});

import {
  basename,
  DASH,
  describeGpu,
  formatBytes,
  formatMemory,
  formatPercent,
  statusText
} from '../format';
import { gpu } from './fixtures';

describe('formatBytes', () => {
  it('uses binary units with one decimal', () => {
    expect(formatBytes(3.2 * 1024 ** 3)).toBe('3.2 GiB');
    expect(formatBytes(80 * 1024 ** 3)).toBe('80.0 GiB');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(2 * 1024 ** 4)).toBe('2.0 TiB');
  });

  it('keeps small counts in bytes', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(512)).toBe('512 B');
  });

  it('shows a dash for a figure the GPU does not report', () => {
    expect(formatBytes(null)).toBe(DASH);
    expect(formatBytes(undefined)).toBe(DASH);
    expect(formatBytes(NaN)).toBe(DASH);
  });
});

describe('formatPercent', () => {
  it('rounds to a whole percent', () => {
    expect(formatPercent(37.4)).toBe('37%');
    expect(formatPercent(0)).toBe('0%');
    expect(formatPercent(100)).toBe('100%');
  });

  it('shows a dash for null', () => {
    expect(formatPercent(null)).toBe(DASH);
  });
});

describe('formatMemory', () => {
  it('shows used over total', () => {
    expect(formatMemory(3.2 * 1024 ** 3, 16 * 1024 ** 3)).toBe('3.2 / 16.0 GiB');
  });

  it('keeps a dash where a side is unknown', () => {
    expect(formatMemory(null, 16 * 1024 ** 3)).toBe(`${DASH} / 16.0 GiB`);
  });
});

describe('statusText', () => {
  it('shows one GPU, or several with their mean use and summed memory', () => {
    expect(statusText([gpu(0)])).toBe('GPU 0: 40% \u00b7 1.0 / 16.0 GiB');
    const busy = gpu(1, [], { utilization: { gpu: 80, memory: 0 } });
    expect(statusText([gpu(0), busy])).toBe('GPU 0,1: 60% \u00b7 2.0 / 32.0 GiB');
  });

  it('says when GPUs are lost or missing', () => {
    expect(statusText([])).toBe('GPU: none');
    expect(statusText([gpu(3, [], { lost: true })])).toBe('GPU 3: lost');
  });

  it('leaves lost GPUs out of the figures', () => {
    expect(statusText([gpu(0), gpu(1, [], { lost: true })])).toBe(
      'GPU 0,1: 40% \u00b7 1.0 / 16.0 GiB'
    );
  });
});

describe('basename and describeGpu', () => {
  it('name things briefly', () => {
    expect(basename('a/b/c.ipynb')).toBe('c.ipynb');
    expect(basename(null)).toBe('');
    expect(describeGpu(gpu(0))).toBe(
      'GPU 0 Simulated GPU 16GB: 40% busy, memory 1.0 / 16.0 GiB, 50 \u00b0C'
    );
  });
});

import {
  basename,
  DASH,
  describeGpu,
  describeInterconnect,
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

describe('describeInterconnect', () => {
  const nvlink = {
    links: 4,
    active: 3,
    tx: 2 * 1024 ** 3,
    rx: 1024 ** 3,
    tx_total: 1,
    rx_total: 1,
    reason: null
  };

  it('says nothing while nobody watches the interconnect', () => {
    expect(describeInterconnect(gpu(0))).toBeNull();
  });

  it('shows PCIe and NVLink rates and active links', () => {
    const g = { ...gpu(0), pcie: { tx: 1024 ** 3, rx: 2 * 1024 ** 3 }, nvlink };
    expect(describeInterconnect(g)).toBe(
      'PCIe \u2191 1.0 GiB/s \u2193 2.0 GiB/s \u00b7 NVLink 3/4 links \u2191 2.0 GiB/s \u2193 1.0 GiB/s'
    );
  });

  it('says when a watched GPU has no NVLink, and waits for a rate', () => {
    const watched = { ...gpu(0), pcie: { tx: 0, rx: 0 } };
    expect(describeInterconnect(watched)).toBe('PCIe \u2191 0 B/s \u2193 0 B/s \u00b7 no NVLink');
    const first = { ...gpu(0), nvlink: { ...nvlink, tx: null, rx: null } };
    expect(describeInterconnect(first)).toBe('NVLink 3/4 links');
  });
});

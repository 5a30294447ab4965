import { DASH, formatBytes, formatMemory, formatPercent } from '../format';

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
    expect(formatMemory(3.2 * 1024 ** 3, 16 * 1024 ** 3)).toBe('3.2 GiB / 16.0 GiB');
  });

  it('keeps a dash where a side is unknown', () => {
    expect(formatMemory(null, 16 * 1024 ** 3)).toBe(`${DASH} / 16.0 GiB`);
  });
});

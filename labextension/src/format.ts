/** Pure formatting helpers for GPU figures; null (not supported) shows as a dash. */

/** Shown for a figure the GPU does not report. */
export const DASH = '\u2013';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** Bytes in binary units with one decimal, e.g. `3.2 GiB`. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) {
    return DASH;
  }
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** A percentage rounded to a whole number, e.g. `37%`. */
export function formatPercent(percent: number | null | undefined): string {
  if (percent === null || percent === undefined || !Number.isFinite(percent)) {
    return DASH;
  }
  return `${Math.round(percent)}%`;
}

/** Used over total memory, e.g. `3.2 GiB / 16.0 GiB`. */
export function formatMemory(
  used: number | null | undefined,
  total: number | null | undefined
): string {
  return `${formatBytes(used)} / ${formatBytes(total)}`;
}

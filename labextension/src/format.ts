/** Pure formatting helpers for GPU figures; null (not supported) shows as a dash. */

import { IGpu } from './types';

/** Shown for a figure the GPU does not report. */
export const DASH = '\u2013';

/** Bytes in a MiB and a GiB (the server gives limits in MiB, figures in bytes). */
export const MiB = 2 ** 20;
export const GiB = 2 ** 30;

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

/** Used over total memory in the total's unit, e.g. `0.3 / 16.0 GiB`. */
export function formatMemory(
  used: number | null | undefined,
  total: number | null | undefined
): string {
  const known = (v: number | null | undefined): v is number =>
    v !== null && v !== undefined && Number.isFinite(v);
  if (!known(used) || !known(total)) {
    return `${formatBytes(used)} / ${formatBytes(total)}`;
  }
  const unit = formatBytes(total).split(' ')[1];
  const scale = 1024 ** UNITS.indexOf(unit);
  const digits = unit === 'B' ? 0 : 1;
  return `${(used / scale).toFixed(digits)} / ${(total / scale).toFixed(digits)} ${unit}`;
}

/** The last segment of a path, e.g. `train.ipynb` for `projects/train.ipynb`. */
export function basename(path: string | null | undefined): string {
  return path ? path.split('/').pop() || path : '';
}

/** The status bar's text for some GPUs: one GPU's figures, or several GPUs' mean and sums. */
export function statusText(gpus: IGpu[]): string {
  const live = gpus.filter(g => !g.lost);
  if (!gpus.length) {
    return 'GPU: none';
  }
  const label = `GPU ${gpus.map(g => g.index).join(',')}`;
  if (!live.length) {
    return `${label}: lost`;
  }
  const known = (values: (number | null)[]) => values.filter((v): v is number => v !== null);
  const sum = (values: (number | null)[]) =>
    known(values).length ? known(values).reduce((a, b) => a + b, 0) : null;
  const busy = known(live.map(g => g.utilization.gpu));
  const mean = busy.length ? busy.reduce((a, b) => a + b, 0) / busy.length : null;
  const used = sum(live.map(g => g.memory.used));
  const total = sum(live.map(g => g.memory.total));
  return `${label}: ${formatPercent(mean)} \u00b7 ${formatMemory(used, total)}`;
}

/** One tooltip line for a GPU. */
export function describeGpu(gpu: IGpu): string {
  if (gpu.lost) {
    return `GPU ${gpu.index} ${gpu.name}: lost`;
  }
  const temperature = gpu.temperature === null ? DASH : `${gpu.temperature} \u00b0C`;
  return (
    `GPU ${gpu.index} ${gpu.name}: ${formatPercent(gpu.utilization.gpu)} busy, ` +
    `memory ${formatMemory(gpu.memory.used, gpu.memory.total)}, ${temperature}`
  );
}

/** A rate in binary units, e.g. `1.2 GiB/s`. */
function formatRate(bytesPerSecond: number | null): string {
  return bytesPerSecond === null ? DASH : `${formatBytes(Math.round(bytesPerSecond))}/s`;
}

/**
 * The interconnect line of a GPU card while someone watches it (PCIe and NVLink figures are
 * read only then): `PCIe ↑ 1.0 GiB/s ↓ 2.0 GiB/s · NVLink 4/4 links ↑ … ↓ …`; null otherwise.
 */
export function describeInterconnect(gpu: IGpu): string | null {
  const { pcie, nvlink } = gpu;
  const parts: string[] = [];
  if (pcie.tx !== null || pcie.rx !== null) {
    parts.push(`PCIe \u2191 ${formatRate(pcie.tx)} \u2193 ${formatRate(pcie.rx)}`);
  }
  if (nvlink && nvlink.links > 0 && nvlink.active !== null) {
    const rates =
      nvlink.tx === null && nvlink.rx === null
        ? ''
        : ` \u2191 ${formatRate(nvlink.tx)} \u2193 ${formatRate(nvlink.rx)}`;
    parts.push(`NVLink ${nvlink.active}/${nvlink.links} links${rates}`);
  } else if (parts.length && nvlink && nvlink.links === 0) {
    parts.push('no NVLink');
  }
  return parts.length ? parts.join(' \u00b7 ') : null;
}

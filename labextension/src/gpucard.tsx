import * as React from 'react';

import { DASH, describeInterconnect, formatMemory, formatPercent } from './format';
import { ISeries } from './stream';
import { IGpu } from './types';

/** What a process list that is not current means, for its line's tooltip. */
const STALE_PROCESSES =
  "The last read of this GPU's process list failed. Who holds its memory is shown as an " +
  'earlier read found it, for a limited time (the list is then left empty); the figures NVML ' +
  'gives for the kernels that may use this GPU are unknown until a read succeeds.';

/**
 * One GPU: utilization and memory with sparklines, temperature and power, and whether its
 * process list is current.
 */
export function GpuCard(props: {
  gpu: IGpu;
  simulated: boolean;
  series?: ISeries;
  seconds: number;
}): JSX.Element {
  const { gpu, simulated, series, seconds } = props;
  const interconnect = describeInterconnect(gpu);
  const power =
    gpu.power.draw === null
      ? DASH
      : `${Math.round(gpu.power.draw)} W${gpu.power.limit === null ? '' : ` of ${Math.round(gpu.power.limit)} W`}`;
  return (
    <section className="jp-tfgpu-Gpu" aria-label={`GPU ${gpu.index}`}>
      <div className="jp-tfgpu-Gpu-title">
        <span className="jp-tfgpu-Gpu-index">GPU {gpu.index}</span>
        {gpu.lost && <span className="jp-tfgpu-Badge jp-tfgpu-mod-lost">LOST</span>}
        {simulated && (
          <span
            className="jp-tfgpu-Badge jp-tfgpu-mod-simulated"
            title="A simulated GPU: its memory is the real memory of the kernels placed on it"
          >
            SIMULATED
          </span>
        )}
      </div>
      <div className="jp-tfgpu-Gpu-name" title={gpu.uuid}>
        {gpu.name}
      </div>
      {gpu.lost ? (
        <p className="jp-tfgpu-Muted">{gpu.lost_reason ?? 'The GPU stopped answering.'}</p>
      ) : (
        <>
          <Metric
            label="Utilization"
            value={formatPercent(gpu.utilization.gpu)}
            t={series?.t}
            values={series?.utilization}
            max={100}
            seconds={seconds}
            kind="utilization"
          />
          <Metric
            label="Memory"
            value={formatMemory(gpu.memory.used, gpu.memory.total)}
            t={series?.t}
            values={series?.memory}
            max={gpu.memory.total ?? 1}
            seconds={seconds}
            kind="memory"
          />
          {gpu.processes_stale && (
            <p className="jp-tfgpu-Gpu-stale" title={STALE_PROCESSES}>
              Process list not current: {gpu.processes_stale}
            </p>
          )}
          <div className="jp-tfgpu-Gpu-foot">
            <span title="Temperature">
              {gpu.temperature === null ? DASH : `${gpu.temperature} \u00b0C`}
            </span>
            <span title="Power draw">{power}</span>
          </div>
          {interconnect && (
            <div
              className="jp-tfgpu-Gpu-link"
              title={gpu.nvlink?.reason ?? 'Data sent and received over PCIe and NVLink'}
            >
              {interconnect}
            </div>
          )}
        </>
      )}
    </section>
  );
}

/** A figure with its sparkline over the last `seconds`. */
function Metric(props: {
  label: string;
  value: string;
  t?: number[];
  values?: (number | null)[];
  max: number;
  seconds: number;
  kind: string;
}): JSX.Element {
  const minutes = Math.round(props.seconds / 60);
  return (
    <div className={`jp-tfgpu-Metric jp-tfgpu-mod-${props.kind}`}>
      <div className="jp-tfgpu-Metric-head">
        <span>{props.label}</span>
        <span className="jp-tfgpu-Metric-value">{props.value}</span>
      </div>
      <Sparkline
        t={props.t ?? []}
        values={props.values ?? []}
        max={props.max}
        seconds={props.seconds}
        label={`${props.label} over the last ${minutes > 1 ? `${minutes} minutes` : `${props.seconds} seconds`}`}
      />
    </div>
  );
}

/** An area chart of `values` (0..max) against time; gaps where a value is null. */
function Sparkline(props: {
  t: number[];
  values: (number | null)[];
  max: number;
  seconds: number;
  label: string;
}): JSX.Element {
  const { t, values, max } = props;
  const end = t.length ? t[t.length - 1] : 0;
  // A young server has little history: stretch it over at least a minute's width.
  const seconds = Math.min(props.seconds, Math.max(60, t.length ? end - t[0] : 0));
  const runs: string[][] = [];
  let run: string[] | null = null;
  t.forEach((time, i) => {
    const v = values[i];
    if (v === null || v === undefined) {
      run = null;
      return;
    }
    if (!run) {
      runs.push((run = []));
    }
    const x = 100 - ((end - time) / seconds) * 100;
    const y = 30 - Math.min(1, Math.max(0, v / max)) * 28;
    run.push(`${x.toFixed(2)},${y.toFixed(2)}`);
  });
  return (
    <svg
      className="jp-tfgpu-Sparkline"
      viewBox="0 0 100 30"
      preserveAspectRatio="none"
      role="img"
      aria-label={props.label}
    >
      <title>{props.label}</title>
      {runs.map((points, i) => {
        const first = points[0].split(',')[0];
        const last = points[points.length - 1].split(',')[0];
        return (
          <g key={i}>
            <polygon points={`${first},30 ${points.join(' ')} ${last},30`} />
            <polyline points={points.join(' ')} vectorEffect="non-scaling-stroke" />
          </g>
        );
      })}
    </svg>
  );
}

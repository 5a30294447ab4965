/**
 * What the panel says of a kernel's GPU memory beyond its bytes: where the figure comes from,
 * when it is unknown, what the kernel's cap leaves its frameworks, and how the cap is enforced.
 */

import * as React from 'react';

import { basename, formatBytes, MiB } from './format';
import { IHolder } from './holders';
import {
  EnforcementLevel,
  IConfig,
  IGpu,
  IHardCapsStatus,
  IKernel,
  IKernelEnforcement
} from './types';

/** What a figure that is the kernel's own report is (the "own report" tag's tooltip). */
export const OWN_REPORT =
  "Reported by the kernel's frameworks from inside the kernel (the server cannot match the " +
  "GPU's processes to it, as in a container without the host's PIDs); leaves out the CUDA context.";

/** The tag's meaning in short, said once under a list that has the tag. */
export const OWN_REPORT_NOTE =
  "Own report: the kernel's frameworks' own figure, sent from inside the kernel; it leaves " +
  'out the CUDA context.';

/** What a cap is, for the cap line's tooltip. */
const CAP =
  "A cap is what NVML (and nvidia-smi) shows for the kernel's processes. The frameworks get " +
  'the cap less the room the CUDA context and libraries take outside their allocators.';

/** Where the context reserve comes from, for the cap line's tooltip. */
const RESERVE_SOURCES: Record<string, string> = {
  measured: 'The room left was measured on this server for these GPU models and driver.',
  'starting value':
    'The room left is the starting value (or a larger figure measured here): these GPUs have ' +
    'not all been measured on this server yet.'
};

/** Each level in the UI's words (the server's LEVELS labels, policy/cap_enforcement.py). */
const LEVEL_LABELS: Record<EnforcementLevel, string> = {
  driver: 'hard cap',
  framework: 'cooperative',
  none: 'no cap'
};

/** What holds a cap, in a sentence ("held by ..."), by the API's mechanism name. */
const MECHANISM_WORDS: Record<string, string> = {
  nvml_memory_limit: "an NVML memory limit on the kernel's cgroup, set in the driver",
  mps: 'an MPS memory limit, set in the driver',
  framework_settings: 'the framework settings (TensorFlow, PyTorch, JAX)'
};

/** The driver limit each hard-caps mode sets, in a few words. */
const MODE_LIMITS: Record<string, string> = {
  mps: 'an MPS memory limit',
  nvml: "an NVML memory limit on the kernel's cgroup"
};

/** Each hard-caps mode by name. */
const MODE_NAMES: Record<string, string> = { mps: 'MPS', nvml: 'NVML' };

/** What the admin's enforcer does to a kernel past its cap. */
const ENFORCER_ACTS: Record<string, string> = {
  warn: 'warns',
  interrupt: 'interrupts the kernel',
  restart: 'restarts the kernel',
  shutdown: 'shuts the kernel down'
};

/**
 * How this server would hold a memory limit set in the policy form, from GET status's
 * `hard_caps` (and the enforcer's rules, when known): always "cooperative", as GET status reports
 * no level; only a running kernel's enforcement can say 'driver'. Null before status is read.
 */
export function describeLimitHolding(
  hardCaps: IHardCapsStatus | undefined,
  enforcement?: IConfig['enforcement']
): string | null {
  if (!hardCaps) {
    return null;
  }
  const { asked, in_force: mode, reason, mechanism, host } = hardCaps;
  const enforcer = !enforcement
    ? ''
    : enforcement.action === 'off'
      ? ' (the enforcer is off)'
      : ` (past it${enforcement.grace > 0 ? `, after ${enforcement.grace} s,` : ','} the enforcer ` +
        `${ENFORCER_ACTS[enforcement.action] ?? enforcement.action})`;
  const start = `On this server a memory limit is ${LEVEL_LABELS.framework}: the kernel's framework settings hold it`;
  const asWhy = reason && asked !== mode ? ` Hard caps asked for: ${asked} (${reason}).` : '';
  const limit = MODE_LIMITS[mode];
  if (!limit) {
    return `${start}${enforcer}.${asWhy}`;
  }
  const name = MODE_NAMES[mode] ?? mode;
  if (mechanism.state !== 'running') {
    const detail = mechanism.detail ? ` (${mechanism.detail})` : '';
    return (
      `${start}${enforcer}; the ${name} mechanism that would set ${limit} is ` +
      `${mechanism.state}${detail}, so a kernel started now may have the framework settings alone.${asWhy}`
    );
  }
  const root =
    mode === 'nvml' && host?.euid === 0 ? ' Here kernels run as root, so they can lift it.' : '';
  return (
    `${start}, and the driver too (${limit})${enforcer}. It is not said to be a hard cap until ` +
    `a GPU run has shown that limit holding on this driver and the kernel cannot lift it.${root}${asWhy}`
  );
}

/** What holds a cap, in a few words (the status bar's first line). */
export const MECHANISM_SHORT: Record<string, string> = {
  nvml_memory_limit: 'NVML memory limit',
  mps: 'MPS',
  framework_settings: 'framework settings'
};

/** A level in the UI's words, and a sentence saying what holds the cap and why it is not hard. */
export interface IEnforcementWords {
  label: string;
  why: string;
}

/** How a kernel's cap is enforced, as the tag's label and its tooltip and description say it. */
export function describeEnforcement(enforcement: IKernelEnforcement): IEnforcementWords {
  const { level, mechanism, reason } = enforcement;
  const label = LEVEL_LABELS[level] ?? level;
  const held = mechanism ? (MECHANISM_WORDS[mechanism] ?? mechanism) : null;
  if (level === 'driver') {
    return {
      label,
      why:
        `Hard cap, held by ${held ?? 'the driver'}: the driver refuses any allocation past ` +
        'it, whatever the framework.'
    };
  }
  if (level === 'none') {
    // The server's reason may start by saying there is no cap: not said twice.
    const why = (reason ?? 'nothing limits its allocations').replace(/^no (memory )?cap: /i, '');
    return { label, why: `No cap: ${why}.` };
  }
  const not = reason ? ` Not a hard cap: ${reason}.` : ' Not a hard cap.';
  return { label, why: `Cooperative cap, held by ${held ?? 'nothing'}.${not}` };
}

/**
 * How each GPU holds a kernel's cap, by GPU index, when its GPUs are not all held alike (its
 * overall level is the weakest of theirs): "Per GPU: GPU 0 cooperative (MPS), ..."; else ''.
 */
export function perGpuWords(kernel: IKernel, gpus: readonly IGpu[]): string {
  const held = kernel.applied?.enforcement?.gpus ?? [];
  const said = held.map(g => {
    const known = gpus.find(gpu => gpu.uuid === g.gpu || String(gpu.index) === g.gpu);
    const by = g.mechanism ? (MECHANISM_SHORT[g.mechanism] ?? g.mechanism) : 'nothing';
    return { gpu: `GPU ${known?.index ?? g.gpu}`, how: `${LEVEL_LABELS[g.level]} (${by})` };
  });
  if (new Set(said.map(s => s.how)).size < 2) {
    return '';
  }
  return `Per GPU: ${said.map(s => `${s.gpu} ${s.how}`).join(', ')}.`;
}

/**
 * The level as a tag: sighted users read its label and hover for the sentence; a screen reader
 * reads the sentence, which starts with the level. `id` lets a control name it as its description;
 * `perGpu` (from `perGpuWords`) ends the sentence.
 */
export function EnforcementTag(props: {
  enforcement: IKernelEnforcement;
  id?: string;
  perGpu?: string;
}): JSX.Element {
  const described = describeEnforcement(props.enforcement);
  const said = props.perGpu ? { ...described, why: `${described.why} ${props.perGpu}` } : described;
  return (
    <span
      id={props.id}
      className="jp-tfgpu-Tag jp-tfgpu-Enforcement"
      data-level={props.enforcement.level}
      title={said.why}
    >
      <span aria-hidden="true">{said.label}</span>
      <span className="jp-tfgpu-VisuallyHidden">{said.why}</span>
    </span>
  );
}

/** The id of a kernel's row's enforcement tag (the row's link names it as its description). */
export function rowEnforcementId(kernelId: string): string {
  return `jp-tfgpu-enforcement-${kernelId}`;
}

/** A kernel's row's enforcement tag, after a separator; nothing before GET kernels read it. */
export function RowEnforcement(props: {
  kernel: IKernel | undefined;
  gpus: readonly IGpu[];
}): JSX.Element | null {
  const { kernel } = props;
  if (!kernel?.enforcement) {
    return null;
  }
  return (
    <>
      {' \u00b7 '}
      <EnforcementTag
        enforcement={kernel.enforcement}
        id={rowEnforcementId(kernel.id)}
        perGpu={perGpuWords(kernel, props.gpus)}
      />
    </>
  );
}

/** The id of the running kernel's enforcement tag (the policy form's limit names it). */
export const RUNNING_ENFORCEMENT_ID = 'jp-tfgpu-enforcement-running';

/** MiB as people write them: `550 MiB`, `3.5 GiB`. */
function mib(value: number): string {
  return value < 1024 ? `${value} MiB` : formatBytes(value * MiB);
}

/** The bytes a kernel holds; when unknown now, the last known figure, marked stale. */
export function HolderFigure(props: { holder: IHolder }): JSX.Element {
  const { holder } = props;
  if (!holder.unknown) {
    return <span className="jp-tfgpu-Holder-memory">{formatBytes(holder.total)}</span>;
  }
  return (
    <span
      className="jp-tfgpu-Holder-memory jp-tfgpu-mod-stale"
      title="The last known figure: the server cannot know this kernel's GPU memory now"
    >
      <span className="jp-tfgpu-VisuallyHidden">last known </span>
      {formatBytes(holder.total)}
    </span>
  );
}

/** The GPUs a kernel holds memory on; a figure that is its own report is tagged so. */
export function HolderGpus(props: { holder: IHolder }): JSX.Element {
  return (
    <>
      {props.holder.gpus.map((g, i) => (
        <React.Fragment key={g.index}>
          {i > 0 && ', '}
          {`GPU ${g.index}`}
          {g.ownReport && (
            <>
              {' '}
              <span className="jp-tfgpu-Tag" title={OWN_REPORT}>
                own report
              </span>
            </>
          )}
        </React.Fragment>
      ))}
    </>
  );
}

/** Why a kernel's GPU memory is unknown now: a warning badge (the reason its tooltip) and the reason. */
export function UnknownNote(props: { reason: string }): JSX.Element {
  return (
    <div className="jp-tfgpu-Holder-note">
      <span className="jp-tfgpu-Badge jp-tfgpu-mod-unknown" title={props.reason}>
        GPU memory unknown
      </span>
      <span className="jp-tfgpu-Holder-reason">{props.reason}</span>
    </div>
  );
}

/** Under the list, once, when a figure in it is a kernel's own report: the tag's meaning. */
export function OwnReportNote(): JSX.Element {
  return <p className="jp-tfgpu-Muted jp-tfgpu-Footnote">{OWN_REPORT_NOTE}</p>;
}

/** The NVIDIA MPS server's process: its bytes, GPU and PID, and why kernels' work shows there. */
export function MpsServerHolder(props: { holder: IHolder }): JSX.Element {
  const h = props.holder;
  return (
    <li className="jp-tfgpu-Holder">
      <div className="jp-tfgpu-Holder-head">
        <span className="jp-tfgpu-Holder-name">MPS server</span>
        <span>{formatBytes(h.total)}</span>
      </div>
      <div className="jp-tfgpu-Muted">
        NVIDIA MPS on GPU {h.gpus[0].index} (PID {h.pids[0]}): kernels run their GPU work through
        it; its figure may include theirs.
      </div>
    </li>
  );
}

/** Kernels whose GPU memory is unknown now and that have no figure at all: one item for all. */
export function UnknownKernels(props: { kernels: readonly IKernel[] }): JSX.Element | null {
  const { kernels } = props;
  if (!kernels.length) {
    return null;
  }
  const names = kernels.map(k => basename(k.notebook) || `Kernel ${k.id.slice(0, 8)}`);
  const reasons = [...new Set(kernels.map(k => k.gpu_memory.unknown as string))];
  return (
    <li className="jp-tfgpu-Holder">
      <div className="jp-tfgpu-Holder-head">
        <span
          className="jp-tfgpu-Holder-name"
          title={kernels.map(k => k.notebook ?? k.id).join('\n')}
        >
          {names.join(', ')}
        </span>
      </div>
      <UnknownNote reason={reasons.join('; ')} />
    </li>
  );
}

/**
 * The running kernel's cap as its launch document says (`text`, and `title` for its tooltip),
 * and a warning when the cap leaves no room for the CUDA context; null without a cap.
 */
export function describeCap(
  applied: IKernel['applied']
): { text: string; title: string; warning: string | null } | null {
  const cap = applied?.memory_limit_mb;
  if (typeof cap !== 'number') {
    return null;
  }
  const text = `Running kernel: cap ${mib(cap)} per GPU`;
  const note = applied?.memory_limit_note;
  if (note) {
    return { text: `${text}.`, title: CAP, warning: `The running kernel's cap: ${note}.` };
  }
  const framework = applied?.framework_limit_mb;
  const reserve = applied?.context_reserve_mb;
  if (typeof framework !== 'number' || typeof reserve !== 'number') {
    return { text: `${text}.`, title: CAP, warning: null };
  }
  const source = applied?.context_reserve_source ?? 'starting value';
  if (source === 'simulated') {
    return {
      text: `${text} (simulated GPUs: no CUDA context, frameworks get all of it).`,
      title: CAP,
      warning: null
    };
  }
  const where =
    source === 'measured'
      ? `measured on ${applied?.context_reserve_measured_on ?? 'these GPUs'}`
      : 'starting value';
  return {
    text:
      `${text} (frameworks get ${mib(framework)}; ${mib(reserve)} left for the CUDA context, ` +
      `${where}).`,
    title: `${CAP} ${RESERVE_SOURCES[source] ?? ''}`.trim(),
    warning: null
  };
}

/** The cap line of the running kernel and how its cap is enforced; "no cap" without one. */
export function RunningCap(props: { kernel: IKernel; gpus?: readonly IGpu[] }): JSX.Element | null {
  const { enforcement } = props.kernel;
  const said = describeCap(props.kernel.applied);
  const tag = enforcement && (
    <EnforcementTag
      enforcement={enforcement}
      id={RUNNING_ENFORCEMENT_ID}
      perGpu={perGpuWords(props.kernel, props.gpus ?? [])}
    />
  );
  if (!said) {
    return tag ? <p className="jp-tfgpu-Muted jp-tfgpu-Cap">Running kernel: {tag}</p> : null;
  }
  return (
    <>
      <p className="jp-tfgpu-Muted jp-tfgpu-Cap">
        <span title={said.title}>{said.text}</span>
        {tag && <> Enforcement: {tag}</>}
      </p>
      {said.warning && (
        <p className="jp-tfgpu-Note jp-mod-warning" role="status">
          {said.warning}
        </p>
      )}
    </>
  );
}

/** What the status bar item says (pure functions). */

import { describeAvailability } from './availability';
import { DASH, describeGpu, formatBytes, formatMemory, statusText } from './format';
import { groupHolders, IHolder, limitFor } from './holders';
import { describeEnforcement, MECHANISM_SHORT, OWN_REPORT_NOTE, perGpuWords } from './kernelmemory';
import { IGpu, IKernel, ISnapshot, IStatus } from './types';

/** Which GPUs the status bar shows (the extension's settings). */
export interface IStatusChoice {
  /** `kernel`: the current notebook's kernel's GPU memory; `all`: every GPU's figures. */
  mode: 'kernel' | 'all';
  /** When not empty, exactly these GPU indices. */
  indices: number[];
}

/** The item's text and tooltip; `warning` when a backend the admin named failed. */
export interface IStatusLine {
  text: string;
  /** What a screen reader says: the text, then what its numbers are (the tooltip's first line). */
  label: string;
  tooltip: string;
  simulated: boolean;
  warning: boolean;
}

/** What the status bar knows: the server's status and latest snapshot, and the notebook's kernel. */
export interface IStatusInput {
  status: IStatus | null;
  snapshot: ISnapshot | null;
  /** Why the last request failed. */
  error: string | null;
  /** The current notebook's kernel id (none without a notebook or a kernel). */
  kernelId: string | null | undefined;
  /** That kernel as `KernelsModel` has it (GET `kernels`, the stream's memory source and state). */
  kernel: IKernel | undefined;
  choice: IStatusChoice;
}

const CLICK = 'Click for the GPU panel.';
/** What the figures of the `all` and chosen-GPU modes are. */
const MACHINE = 'mean utilization \u00b7 memory used / total';

/**
 * What the kernel's per-GPU limit is, in words, given where its figures come from: the cap for
 * NVML's figures, the framework limit for its own report (which leaves out the CUDA context).
 */
function limitWords(kernel: IKernel | undefined, holder: IHolder | undefined): string {
  const cap = limitFor(kernel, false);
  if (cap === null) {
    return kernel?.enforcement?.level === 'none' ? '; it has no cap' : '';
  }
  const own = limitFor(kernel, true) as number;
  const reports = holder?.gpus.filter(g => g.ownReport).length ?? 0;
  const held = heldWords(kernel);
  if (!reports || own === cap) {
    return `; its limit is ${formatBytes(cap)} per GPU${held}`;
  }
  if (reports === holder?.gpus.length) {
    return (
      `; its limit is ${formatBytes(own)} per GPU, what its frameworks get under its ` +
      `${formatBytes(cap)} cap${held}`
    );
  }
  return `; its limit is ${formatBytes(cap)} per GPU, ${formatBytes(own)} for its own report${held}`;
}

/** How the kernel's cap is enforced, in a few words: ", a cooperative cap (MPS)". */
function heldWords(kernel: IKernel | undefined): string {
  const enforcement = kernel?.enforcement;
  if (!enforcement) {
    return '';
  }
  const by = enforcement.mechanism ? MECHANISM_SHORT[enforcement.mechanism] : undefined;
  const what = {
    driver: 'a hard cap',
    framework: 'a cooperative cap',
    none: 'but nothing holds it'
  }[enforcement.level];
  return `, ${what}${by ? ` (${by})` : ''}`;
}

/** The sentence that says what holds the kernel's cap and why it is not hard, as a line. */
function whyLine(kernel: IKernel | undefined, gpus: readonly IGpu[]): string {
  if (!kernel?.enforcement) {
    return '';
  }
  const perGpu = perGpuWords(kernel, gpus);
  return `${describeEnforcement(kernel.enforcement).why}${perGpu ? ` ${perGpu}` : ''}\n`;
}

/**
 * The status bar's text. By default it is the GPU memory the current notebook's kernel holds
 * (with its limit when it has one and holds on one GPU at most); the GPUs' totals are in the
 * tooltip. Without a notebook kernel it shows a dash rather than the machine's total, which
 * would read as this notebook's; the `all` setting shows the machine's figures instead.
 */
export function statusLine(input: IStatusInput): IStatusLine {
  const { status, snapshot, error, kernelId, kernel, choice } = input;
  const line = (text: string, tooltip: string, warning = false): IStatusLine => ({
    text,
    label: `${text}. ${tooltip.split('\n')[0]}`,
    tooltip,
    simulated: !!snapshot?.simulated && !!status?.available,
    warning
  });
  if (error) {
    return line('GPU: error', error);
  }
  if (!status) {
    return line(`GPU: ${DASH}`, 'Waiting for the GPU server');
  }
  if (!status.available) {
    const said = describeAvailability(status);
    return line('GPU: n/a', `${said.title}: ${said.message}`, said.level === 'warning');
  }
  if (!snapshot) {
    return line(`GPU: ${DASH}`, 'Waiting for the first sample');
  }
  const all = snapshot.gpus;
  const totals = all.map(describeGpu).join('\n');
  if (choice.indices.length) {
    const gpus = all.filter(g => choice.indices.includes(g.index));
    return line(
      statusText(gpus),
      `GPUs chosen in the settings: ${MACHINE}\n${gpus.map(describeGpu).join('\n')}\n${CLICK}`
    );
  }
  if (choice.mode === 'all') {
    return line(statusText(all), `All GPUs: ${MACHINE}\n${totals}\n${CLICK}`);
  }
  if (!kernelId) {
    return line(
      `GPU: ${DASH}`,
      `No notebook with a running kernel: this shows the GPU memory of the current ` +
        `notebook's kernel.\n${totals}\n${CLICK}`
    );
  }
  const holder = groupHolders(snapshot, kernel ? [kernel] : []).kernels.find(
    h => h.kernelId === kernelId
  );
  const devices = kernel?.applied?.devices;
  if (!holder && Array.isArray(devices) && !devices.length) {
    const why = kernel?.applied?.placement?.reason ?? "This notebook's kernel sees no GPU";
    return line('GPU: CPU only', `${why}\n${totals}\n${CLICK}`);
  }
  const held = holder?.total ?? 0;
  const onOne = (holder?.gpus.length ?? 0) <= 1;
  const limit = limitFor(kernel, onOne && !!holder?.gpus[0]?.ownReport);
  const figure = limit !== null && onOne ? `${formatMemory(held, limit)} limit` : formatBytes(held);
  const where = holder?.gpus.length
    ? ` (${holder.gpus
        .map(g => `GPU ${g.index}: ${formatBytes(g.used)}${g.ownReport ? ', its own report' : ''}`)
        .join(', ')})`
    : '';
  const own = holder?.gpus.some(g => g.ownReport) ? `${OWN_REPORT_NOTE}\n` : '';
  const unknown = kernel?.gpu_memory?.unknown;
  if (unknown) {
    // Unknown is not 0: the last known figure is marked stale, and without one none is shown.
    const lastKnown = holder ? `Last known: ${formatBytes(held)}${where}.\n` : '';
    return line(
      holder ? `GPU: ${figure} (stale)` : 'GPU: unknown',
      `This notebook's kernel's GPU memory is unknown now: ${unknown}.\n${lastKnown}${own}` +
        `${totals}\n${CLICK}`,
      true
    );
  }
  return line(
    `GPU: ${figure}`,
    `This notebook's kernel holds ${formatBytes(held)} of GPU memory${where}` +
      `${limitWords(kernel, holder)}.\n${whyLine(kernel, all)}${own}${totals}\n${CLICK}`
  );
}

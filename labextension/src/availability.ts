/** What to tell the user when the server reads no GPU (pure functions). */

import { IStatus } from './types';

/** Backends an admin can name; one named and failing is a fault, not a GPU-less server. */
const BACKEND_NAMES: Record<string, string> = {
  nvml: 'NVML',
  simulated: 'the simulated backend'
};

/** The panel's explanation: a calm note, or a warning when a backend the admin named failed. */
export interface IAvailability {
  level: 'info' | 'warning';
  title: string;
  /** The server's reason in a sentence, with when it tries again. */
  message: string;
  /** What it means for the user, and what to do. */
  hint: string;
}

/** "in 5 s", or "now" when the next try is due. */
function retryText(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '';
  }
  return seconds < 0.5
    ? ' It is trying again now.'
    : ` It tries again in ${Math.round(seconds)} s.`;
}

/** Why this server shows no GPU, for a status whose `available` is false. */
export function describeAvailability(status: IStatus): IAvailability {
  const reason = status.reason ?? 'This server cannot read its GPUs.';
  const configured = status.configured_backend;
  if (configured === 'none') {
    return {
      level: 'info',
      title: 'GPU monitoring is off',
      message: reason,
      hint: 'The admin turned GPU monitoring off for this server. Notebooks still run as usual.'
    };
  }
  const named = configured ? BACKEND_NAMES[configured] : undefined;
  if (named) {
    return {
      level: 'warning',
      title: 'GPU monitoring failed',
      message: `This server is set to read its GPUs with ${named}, which did not start: ${reason}.${retryText(status.retry_in)}`,
      hint:
        'Until it starts, kernels that let the server choose their GPU run on the CPU only. ' +
        (configured === 'nvml'
          ? 'Tell the admin: the NVIDIA driver or nvidia-ml-py needs a look.'
          : 'Tell the admin.')
    };
  }
  return {
    level: 'info',
    title: 'No GPU on this server',
    message: reason,
    hint:
      'Notebooks still run, on the CPU. On a GPU server, ask the admin to check the NVIDIA ' +
      'driver; to try this panel without a GPU, start JupyterLab with --TFGPU.backend=simulated.'
  };
}

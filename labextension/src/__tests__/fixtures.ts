/** Small builders and fakes shared by the model tests. */

import { GiB } from '../format';
import { IApi, IGpu, IKernel, ISnapshot, IStatus } from '../types';

/** A GPU row; `processes` as [pid, bytes, kernel id, notebook, how it was attributed]. */
export function gpu(
  index: number,
  processes: [
    number,
    number | null,
    string | null,
    string | null,
    ('pid' | 'kernel_report')?
  ][] = [],
  extra: Partial<IGpu> = {}
): IGpu {
  return {
    index,
    uuid: `GPU-${index}`,
    name: 'Simulated GPU 16GB',
    memory: { total: 16 * GiB, used: GiB, free: 15 * GiB },
    utilization: { gpu: 40, memory: 20 },
    temperature: 50,
    power: { draw: 100, limit: 300 },
    fan: null,
    clocks: {},
    pcie: { tx: null, rx: null },
    nvlink: {
      links: 0,
      active: null,
      tx: null,
      rx: null,
      tx_total: null,
      rx_total: null,
      reason: 'this GPU has no NVLink'
    },
    mig: null,
    lost: false,
    processes: processes.map(([pid, used_memory, kernel_id, notebook, attributed_by]) => ({
      pid,
      used_memory,
      kernel_id,
      notebook,
      ...(attributed_by ? { attributed_by } : {})
    })),
    ...extra
  };
}

/** What GET status says of the sampler's own calls (the lab does not show it). */
export const SAMPLER: IStatus['sampler'] = {
  nvml_budget: 0.02,
  backend_time_fraction: 0.001,
  groups: {}
};

/** What GET status says of the CUDA context reserve before any kernel was measured. */
export const CONTEXT_RESERVE: IStatus['context_reserve'] = { starting_mb: 550, measured: [] };

/** What GET status says of TFGPU.hard_caps when it is off (the default). */
export const HARD_CAPS_OFF: IStatus['hard_caps'] = {
  asked: 'off',
  in_force: 'off',
  reason: null,
  mechanism: { name: 'off', state: 'running', detail: null, facts: {} },
  modes: [],
  host: null
};

/** A snapshot taken at `timestamp`. */
export function snapshot(timestamp: number | null, gpus: IGpu[]): ISnapshot {
  return { timestamp, simulated: true, gpus };
}

/** Why framework settings are not a hard cap, and why a kernel has no cap (the server's words). */
export const HELD_BY_SETTINGS =
  'the framework settings (TensorFlow, PyTorch, JAX) hold it: code in the kernel can undo ' +
  'them, and allocators that read none of them (CuPy, Numba, raw CUDA) pass them';
export const NO_CAP =
  'no memory cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb';

/** A kernel as GET kernels shows it; with mode off, a cap it started with is cooperative. */
export function kernel(id: string, extra: Partial<IKernel> = {}): IKernel {
  const capped = typeof extra.applied?.memory_limit_mb === 'number';
  return {
    id,
    name: 'python3',
    notebook: `${id}.ipynb`,
    execution_state: 'idle',
    gpu_memory: { total: 0, per_gpu: [] },
    policy: { sources: {} },
    applied: null,
    restart_required: false,
    enforcement: capped
      ? { level: 'framework', mechanism: 'framework_settings', reason: HELD_BY_SETTINGS }
      : { level: 'none', mechanism: null, reason: NO_CAP },
    ...extra
  };
}

/** A kernel's `gpu_memory` row on one GPU. */
export function perGpu(
  index: number,
  used_memory: number | null,
  source: 'nvml' | 'kernel_report'
): IKernel['gpu_memory']['per_gpu'][number] {
  return { index, uuid: `GPU-${index}`, used_memory, pids: [], source };
}

/** A kernel whose GPU memory is as given (`total` is the sum of the known figures). */
export function kernelHolding(
  id: string,
  rows: IKernel['gpu_memory']['per_gpu'],
  unknown: string | null = null,
  extra: Partial<IKernel> = {}
): IKernel {
  const known = rows.filter(r => r.used_memory !== null);
  const sources = new Set(known.map(r => r.source));
  const source = sources.size > 1 ? 'mixed' : (known[0]?.source ?? null);
  const total = known.reduce((sum, r) => sum + (r.used_memory ?? 0), 0);
  return kernel(id, { gpu_memory: { total, source, unknown, per_gpu: rows }, ...extra });
}

/** A WebSocket double the test drives by hand. */
export class FakeSocket {
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  closed = false;
  readyState = 1; // open
  /** What the client sent (text, as a WebSocket carries it). */
  sent: string[] = [];

  /** Deliver a message from the "server" (an object); a string is the client sending. */
  send(data: unknown): void {
    if (typeof data === 'string') {
      this.sent.push(data);
      return;
    }
    this.onmessage?.({ data: JSON.stringify(data) });
  }

  /** The "server" drops the connection. */
  drop(): void {
    this.onclose?.();
  }

  /** The client closes it. */
  close(): void {
    this.closed = true;
  }
}

/** An API double: answers by endpoint (a value or a function of the request), records calls. */
export function fakeApi(answers: Record<string, unknown>): IApi & {
  calls: string[];
  sockets: FakeSocket[];
} {
  const calls: string[] = [];
  const sockets: FakeSocket[] = [];
  return {
    calls,
    sockets,
    request: async <T>(endPoint: string, init?: RequestInit): Promise<T> => {
      calls.push(`${init?.method ?? 'GET'} ${endPoint}`);
      const key = Object.keys(answers).find(k => endPoint.startsWith(k));
      const answer = key === undefined ? undefined : answers[key];
      if (answer instanceof Error) {
        throw answer;
      }
      return (typeof answer === 'function' ? answer(endPoint, init) : answer) as T;
    },
    connect: () => {
      const socket = new FakeSocket();
      sockets.push(socket);
      return socket as unknown as WebSocket;
    }
  };
}

/**
 * Let pending promise callbacks run: no timer and no wall clock. Code that waits on timers
 * (polls, back-off) is tested under jest's fake timers with `jest.advanceTimersByTimeAsync`.
 */
export async function settle(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    await Promise.resolve();
  }
}

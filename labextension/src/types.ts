/** Shapes of the server's REST answers under `{baseUrl}tfgpu/api/`. */

/** GET `status`: which backend runs and whether GPUs can be read. */
export interface IStatus {
  backend: 'nvml' | 'simulated' | 'none';
  /** `TFGPU.backend` as the admin set it. */
  configured_backend?: 'auto' | 'nvml' | 'simulated' | 'none';
  available: boolean;
  reason: string | null;
  /** Seconds until the server tries the backend again; null when it is open or off. */
  retry_in?: number | null;
  simulated: boolean;
  device_count: number;
  /** Seconds between the server's samples. */
  sample_interval: number;
  history_seconds?: number;
  versions: Record<string, string | null>;
  /** What the sampler measured about its own NVML calls. */
  sampler: {
    nvml_budget: number;
    backend_time_fraction: number;
    rounds?: number;
    history_bytes?: number;
    pcie_watched?: boolean;
    /** Groups the freshness floor keeps above their share of the budget. */
    over_budget?: string[];
    /** Why memory and utilization are read less often than configured; null when they are not. */
    stretch_reason?: string | null;
    groups: Record<
      string,
      {
        interval: number;
        configured_interval: number;
        /** The freshness floor: the longest the budget may stretch the interval. */
        max_interval?: number | null;
        stretched?: boolean;
        cost_ms: number;
        measured_ms?: number;
        calls: number;
      }
    >;
  };
  /** What the frameworks leave of a cap for the CUDA context, per GPU model and driver. */
  context_reserve: {
    starting_mb: number;
    measured: {
      gpu: string;
      driver: string;
      context_mb: number;
      kernels_measured: number;
    }[];
  };
  /** `TFGPU.hard_caps`: the mode asked for, the mode in force and why. */
  hard_caps: IHardCapsStatus;
}

/**
 * How a cap is enforced: 'driver' ("hard cap": the driver refuses allocations past it),
 * 'framework' ("cooperative": settings the kernel's own code could undo), 'none' ("no cap").
 */
export type EnforcementLevel = 'driver' | 'framework' | 'none';

/** What holds a cap; null when nothing does. */
export type EnforcementMechanism = 'nvml_memory_limit' | 'mps' | 'framework_settings' | null;

/** How a kernel's cap is enforced, overall (the weakest of its GPUs). */
export interface IKernelEnforcement {
  level: EnforcementLevel;
  mechanism: EnforcementMechanism;
  /** Why the level is not 'driver'; null when it is. */
  reason: string | null;
}

/** How a kernel's cap is enforced, overall and per GPU, as decided when it started. */
export interface ICapEnforcement {
  level: EnforcementLevel;
  mechanism: EnforcementMechanism;
  reason: string | null;
  gpus: {
    /** The GPU's UUID (its index where none was known). */
    gpu: string;
    level: EnforcementLevel;
    mechanism: EnforcementMechanism;
    reason: string | null;
  }[];
}

/** GET `status`'s `hard_caps`: TFGPU.hard_caps in this server. */
export interface IHardCapsStatus {
  asked: 'off' | 'nvml' | 'mps' | 'auto';
  in_force: 'off' | 'nvml' | 'mps';
  /** Why the mode in force is not the one asked for; null when it is. */
  reason: string | null;
  mechanism: {
    name: 'off' | 'nvml' | 'mps';
    state: 'running' | 'starting' | 'restarting' | 'failed' | 'stopped';
    detail: string | null;
    facts: Record<string, string | number | boolean | null>;
  };
  /** Each mode with a driver mechanism; `missing` is null when not looked at. */
  modes: { name: 'nvml' | 'mps'; implemented: boolean; missing: string[] | null }[];
  host: IHardCapsHost | null;
}

/** What the machine offers the hard-caps mechanisms, found as the server started. */
export interface IHardCapsHost {
  checked_at: number;
  driver: string | null;
  gpus: {
    index: number;
    uuid: string;
    name: string;
    compute_capability: string | null;
    mig: boolean | null;
    compute_mode: 'default' | 'exclusive_thread' | 'prohibited' | 'exclusive_process' | null;
  }[];
  nvml_error: string | null;
  mps_control: string | null;
  external_mps: { pipe_directory: string; control: 'socket' | 'file' | null } | null;
  euid: number | null;
  cgroup: {
    root: string;
    v2: boolean;
    own: string | null;
    dmem: boolean;
    controllers: string[];
  } | null;
  memory_limits: { bindings: boolean; driver: boolean | null; detail: string | null };
}

/** One process holding memory on a GPU. */
export interface IGpuProcess {
  pid: number;
  used_memory: number | null;
  kernel_id: string | null;
  notebook: string | null;
  attributed_by?: 'pid' | 'kernel_report' | null;
  /** Under NVIDIA MPS only: the MPS server, or a client NVML's MPS list names. */
  mps?: 'server' | 'client';
}

/** One GPU in a snapshot; a field the GPU does not support is null. */
export interface IGpu {
  index: number;
  uuid: string;
  name: string;
  memory: { total: number | null; used: number | null; free: number | null };
  utilization: { gpu: number | null; memory: number | null };
  temperature: number | null;
  power: { draw: number | null; limit: number | null };
  fan: number | null;
  clocks: {
    sm?: number | null;
    memory?: number | null;
    sm_max?: number | null;
    memory_max?: number | null;
  };
  pcie: { tx: number | null; rx: number | null };
  nvlink: INvlink;
  /** null when the GPU does not support MIG. */
  mig: {
    enabled: boolean;
    instances: {
      index: number;
      uuid: string;
      gpu_instance_id?: number | null;
      compute_instance_id?: number | null;
      memory_total?: number | null;
      memory?: { total: number | null; used: number | null; free: number | null } | null;
    }[];
  } | null;
  lost: boolean;
  lost_reason?: string | null;
  processes: IGpuProcess[];
  /** Why `processes` is the last list read, not this round's (its read failed); null: fresh. */
  processes_stale?: string | null;
}

/** GET `gpus` and each `stream` message: the server's latest snapshot. */
export interface ISnapshot {
  timestamp: number | null;
  simulated: boolean;
  gpus: IGpu[];
  /** How often memory and utilization are read now (absent before the GPUs are open). */
  cadence?: ICadence;
}

/** One kernel in a `stream` message: a short view of GET `kernels/{id}`, as of its snapshot. */
export interface IStreamKernel {
  id: string;
  notebook: string | null;
  execution_state: string | null;
  /** Bytes on all GPUs (`gpu_memory.total` of GET kernels). */
  gpu_memory: number;
  /** `gpu_memory.source` of GET kernels. */
  gpu_memory_source: 'nvml' | 'kernel_report' | 'mixed' | null;
  /** `gpu_memory.unknown` of GET kernels: why the figure is unknown now. */
  gpu_memory_unknown: string | null;
  /** The limit the kernel started with. */
  memory_limit_mb: number | null;
  restart_required: boolean;
  /** `enforcement.level` of GET kernels: how its cap is enforced. */
  enforcement: EnforcementLevel;
}

/** NVLink: read only while a client watches the interconnect; rates in bytes/s. */
export interface INvlink {
  /** Links the GPU has; 0: none, and `reason` says why. */
  links: number;
  active: number | null;
  tx: number | null;
  rx: number | null;
  tx_total: number | null;
  rx_total: number | null;
  reason: string | null;
}

/** The sampler's cadence: the driver-time budget may stretch it, at most to 5 times. */
export interface ICadence {
  interval: number;
  configured_interval: number;
  /** Why figures refresh less often than configured; null when they do not. */
  stretch_reason: string | null;
}

/** GET `gpus/history`: one list per series per GPU, aligned with `timestamps`. */
export interface IHistory {
  seconds: number;
  interval: number;
  simulated: boolean;
  timestamps: number[];
  gpus: {
    index: number;
    utilization: (number | null)[];
    memory_used: (number | null)[];
    memory_utilization: (number | null)[];
    temperature: (number | null)[];
    power: (number | null)[];
  }[];
}

/** A policy: field name -> value; a missing or null field means "no opinion". */
export type Policy = Record<string, unknown>;

/** Where an effective field's value came from. */
export type Source = 'default' | 'notebook' | 'cap' | null;

/** The admin default, then the notebook's own fields, then clamped by the admin caps. */
export type EffectivePolicy = Policy & { sources: Record<string, Source> };

/** GET/PUT `policies/{path}`. */
export interface IPolicyDescription {
  notebook: string;
  policy: Policy | null;
  effective: EffectivePolicy;
  /** The policy revision this answer is as new as (see `IPolicyChanges`). */
  revision: number;
}

/** The stream's `policies`: every change to the stored policies, numbered. */
export interface IPolicyChanges {
  /** Changes with each server start, and when the admin's caps change: read everything again. */
  epoch: string;
  /** The last change's number; 0 until the first change. */
  revision: number;
  /** The last changes, oldest first. */
  changes: { revision: number; path: string }[];
}

/** How a kernel whose policy said `devices: "auto"` got its GPUs when it started. */
export interface IPlacement {
  /** null when the server could not place at all (no GPU monitoring). */
  strategy: string | null;
  requested: number;
  /** The GPUs' UUIDs; empty: the kernel runs on the CPU only. */
  chosen: string[];
  reason: string | null;
}

/** One running kernel (GET `kernels`). */
export interface IKernel {
  id: string;
  name: string | null;
  notebook: string | null;
  execution_state: string | null;
  gpu_memory: {
    total: number;
    /**
     * Where the figures come from: NVML (the kernel's processes, as nvidia-smi shows them),
     * the kernel's own report (its frameworks' figures, without the CUDA context), or both.
     */
    source?: 'nvml' | 'kernel_report' | 'mixed' | null;
    /** Why the kernel's GPU memory is unknown now (a stale process list, a report that stopped). */
    unknown?: string | null;
    per_gpu: {
      index: number;
      uuid: string;
      used_memory: number | null;
      pids: number[];
      /** nvml: matched by the kernel's PIDs; kernel_report: the framework's own figures. */
      source: 'nvml' | 'kernel_report';
    }[];
  };
  policy: EffectivePolicy;
  /** The policy document the kernel's process started with. */
  applied:
    | (Policy & {
        devices?: string[] | null;
        placement?: IPlacement;
        started?: number;
        /** What the frameworks were given: the cap less the CUDA context reserve. */
        framework_limit_mb?: number;
        /** Room left under the cap for the CUDA context and libraries, MiB. */
        context_reserve_mb?: number;
        context_reserve_source?: 'measured' | 'starting value' | 'simulated';
        /** The GPU model(s) and driver the measured reserve is for. */
        context_reserve_measured_on?: string | null;
        /** Present when the cap leaves no room for the context: any GPU use passes it. */
        memory_limit_note?: string;
        /** How its cap is enforced, per GPU, as decided when it started. */
        enforcement?: ICapEnforcement;
      })
    | null;
  restart_required: boolean;
  /** How its cap in force is enforced now, overall. */
  enforcement: IKernelEnforcement;
}

/**
 * GET `config`: the admin settings in force. The caps and enforcement may change while the
 * server runs (a caps file); the stream's `policies.epoch` changes with them.
 */
export interface IConfig {
  default_policy: Policy;
  max_memory_mb: number | null;
  allowed_devices: (number | string)[] | null;
  force_memory_growth: boolean;
  allow_user_policies: boolean;
  forced_policy: Policy;
  max_threads: number | null;
  placement_strategy: 'most_free_memory' | 'fewest_kernels' | 'pack';
  backend: 'auto' | 'nvml' | 'simulated' | 'none';
  sample_interval: number;
  history_seconds: number;
  nvml_budget: number;
  policy_store_path: string;
  provisioner: { name: string; default: boolean; reason: string | null };
  enforcement: {
    action: 'off' | 'warn' | 'interrupt' | 'restart' | 'shutdown';
    grace: number;
    idle_timeout: number;
    idle_min_memory_mb: number;
    idle_action: 'warn' | 'interrupt' | 'restart' | 'shutdown';
    max_actions_per_hour: number;
  };
  /** The caps file (TFGPU.caps_file) and what of it is in force; null without one. */
  caps_file: {
    path: string;
    /** Seconds since the epoch. */
    read_at: number | null;
    in_force: boolean;
    applied_at: number | null;
    settings: string[];
    /** Also on the command line, which wins: the file's value is not used. */
    overridden: string[];
  } | null;
  /** TFGPU.hard_caps as the admin set it (GET status says which mode is in force). */
  hard_caps: 'off' | 'nvml' | 'mps' | 'auto';
  problems: { setting: string | null; message: string; file: string | null }[];
}

/** An enforcement action, as the event bus and GET `enforcement` carry it. */
export interface IEnforcementEvent {
  kernel_id: string;
  notebook?: string | null;
  rule: 'memory_cap' | 'idle';
  action: 'warn' | 'interrupt' | 'restart' | 'shutdown';
  dry_run?: boolean;
  reason: string;
  status?: 'done' | 'failed' | 'skipped';
  /** How the kernel's cap was enforced when this was decided. */
  enforcement?: EnforcementLevel | null;
}

/** The two calls every model needs; bound to the server settings by `serverApi` (request.ts). */
export interface IApi {
  /** `requestAPI` bound to the server settings. */
  request<T>(endPoint: string, init?: RequestInit): Promise<T>;
  /** Open the `stream` websocket. */
  connect(): WebSocket;
}

/** Shapes of the server's REST answers under `{baseUrl}tfgpu/api/`. */

/** GET `status`: which backend runs and whether GPUs can be read. */
export interface IStatus {
  backend: 'nvml' | 'simulated' | 'none';
  available: boolean;
  reason: string | null;
  simulated: boolean;
  device_count: number;
  /** Seconds between the server's samples. */
  sample_interval: number;
  versions: Record<string, string | null>;
}

/** One process holding memory on a GPU. */
export interface IGpuProcess {
  pid: number;
  used_memory: number | null;
  kernel_id: string | null;
  notebook: string | null;
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
  lost: boolean;
  processes: IGpuProcess[];
}

/** GET `gpus`: the server's latest snapshot. */
export interface ISnapshot {
  timestamp: number;
  simulated: boolean;
  gpus: IGpu[];
}

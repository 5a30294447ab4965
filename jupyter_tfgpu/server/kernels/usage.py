"""Each kernel's GPU usage summed over time: memory held (byte-seconds) and GPU-busy seconds.

Counted per kernel and GPU from every snapshot the sampler takes, so ``increase()`` in
Prometheus over a week gives each notebook's (and user's) usage. A stopped kernel's totals go
with it (its series disappear; Prometheus keeps what it scraped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jupyter_tfgpu.gpu.readings import GpuReading

# A gap between two snapshots longer than this (a stalled sampler, a suspended VM) counts as this.
MAX_STEP_SECONDS = 60.0


@dataclass
class Usage:
    """One kernel on one GPU."""

    notebook: str | None
    uuid: str
    memory_byte_seconds: float = 0.0
    busy_seconds: float = 0.0


class KernelUsage:
    """Running totals per (kernel id, GPU index), updated once per snapshot."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, int], Usage] = {}
        self._last: float | None = None

    def add(
        self,
        timestamp: float | None,
        gpus: Iterable[GpuReading],
        memory_rows: Iterable[Mapping[str, Any]],
    ) -> None:
        """Count the time since the previous snapshot at this snapshot's figures."""
        if timestamp is None:
            return
        step = 0.0 if self._last is None else min(max(0.0, timestamp - self._last), MAX_STEP_SECONDS)
        self._last = timestamp
        running: set[str] = set()
        for row in memory_rows:
            kernel_id = row["kernel_id"]
            running.add(kernel_id)
            for gpu in row["per_gpu"]:
                key = (kernel_id, int(gpu["index"]))
                usage = self._totals.get(key)
                if usage is None:
                    usage = self._totals[key] = Usage(row.get("notebook"), str(gpu.get("uuid") or ""))
                usage.notebook = row.get("notebook")
                if gpu.get("used_memory") is not None:
                    usage.memory_byte_seconds += step * float(gpu["used_memory"])
        # Busy: the SM utilization NVML gives per process, summed over the kernel's processes.
        for gpu in gpus:
            share: dict[str, float] = {}  # only this server's running kernels
            for proc in gpu.processes:
                util = proc.utilization
                if proc.kernel_id in running and util is not None and util.sm is not None:
                    share[proc.kernel_id] = share.get(proc.kernel_id, 0.0) + util.sm / 100
            for kernel_id, busy in share.items():
                key = (kernel_id, gpu.index)
                usage = self._totals.get(key)
                if usage is None:
                    usage = self._totals[key] = Usage(None, gpu.uuid)
                usage.busy_seconds += step * min(busy, 1.0)
        for key in [k for k in self._totals if k[0] not in running]:
            del self._totals[key]  # the kernel stopped

    def totals(self) -> dict[tuple[str, int], Usage]:
        """(kernel id, GPU index) -> its totals so far."""
        return dict(self._totals)

"""GPU memory each kernel holds, worked out once per snapshot and shared by every view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from jupyter_tfgpu.gpu.keys import gpu_keys
from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.server.kernels.channel import KernelReports
from jupyter_tfgpu.server.sampling.sampler import Snapshot


@dataclass(frozen=True)
class GpuMemory:
    """What one kernel holds on one GPU, and where the figure comes from: "nvml" (its process
    tree's PIDs) or "kernel_report" (the framework's own figures)."""

    index: int
    uuid: str
    used_memory: int | None  # bytes; None when NVML lists its PIDs without a figure
    source: str
    pids: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "used_memory": self.used_memory,
            "source": self.source,
            "pids": list(self.pids),
        }


@dataclass(frozen=True)
class KernelMemory:
    """GPU memory held by one kernel, per GPU and in total (bytes)."""

    per_gpu: tuple[GpuMemory, ...] = ()

    @property
    def known(self) -> list[int]:
        """The per-GPU figures that are known."""
        return [g.used_memory for g in self.per_gpu if g.used_memory is not None]

    @property
    def total(self) -> int:
        """Bytes held over all GPUs, counting only known figures."""
        return sum(self.known)

    def as_dict(self) -> dict[str, Any]:
        """As the API shows it: ``{"total": ..., "per_gpu": [...]}``."""
        return {"total": self.total, "per_gpu": [g.as_dict() for g in self.per_gpu]}


@dataclass(frozen=True)
class _GpuHoldings:
    """One GPU of a snapshot: its keys and, per kernel, the PIDs NVML attributed to it by PID."""

    index: int
    uuid: str
    keys: frozenset[str]
    pids: Mapping[str, list[int]]  # kernel id -> its PIDs on this GPU
    figures: Mapping[str, list[int]]  # kernel id -> the known figures of those PIDs


class SnapshotMemory:
    """Every kernel's GPU memory in one snapshot, read from its GPU readings once."""

    def __init__(self, gpus: Sequence[GpuReading]) -> None:
        self._gpus = [_holdings(gpu) for gpu in gpus]
        # kernel id -> (the reported devices it was worked out with, the result)
        self._memo: dict[str, tuple[Mapping[str, int], KernelMemory]] = {}

    def of(self, kernel_id: str, reported: Mapping[str, int]) -> KernelMemory:
        """One kernel's memory, given what its own reporter says it holds ({GPU key: bytes})."""
        memo = self._memo.get(kernel_id)
        if memo is not None and memo[0] == reported:
            return memo[1]
        per_gpu = []
        for gpu in self._gpus:
            pids = sorted(gpu.pids.get(kernel_id, ()))
            used = gpu.figures.get(kernel_id)
            from_report = [held for key, held in reported.items() if key in gpu.keys]
            if used:
                row = (sum(used), "nvml")
            elif from_report:
                # NVML lists none of the kernel's PIDs here, or gives no figure for them (N/A).
                row = (sum(from_report), "kernel_report")
            elif pids:
                row = (None, "nvml")
            else:
                continue
            per_gpu.append(GpuMemory(gpu.index, gpu.uuid, row[0], row[1], tuple(pids)))
        memory = KernelMemory(tuple(per_gpu))
        self._memo[kernel_id] = (dict(reported), memory)
        return memory


def _holdings(gpu: GpuReading) -> _GpuHoldings:
    pids: dict[str, list[int]] = {}
    figures: dict[str, list[int]] = {}
    for proc in gpu.processes:
        if proc.attributed_by != "pid" or proc.kernel_id is None:
            continue
        pids.setdefault(proc.kernel_id, []).append(proc.pid)
        if proc.used_memory is not None:
            figures.setdefault(proc.kernel_id, []).append(proc.used_memory)
    return _GpuHoldings(gpu.index, gpu.uuid, gpu_keys(gpu), pids, figures)


class KernelMemoryReader:
    """Each kernel's GPU memory in the sampler's latest snapshot, worked out once per snapshot
    (the sampler publishes a new ``Snapshot`` object each round) and per report it is given."""

    def __init__(self, latest: Callable[[], Snapshot], reports: KernelReports) -> None:
        self._latest = latest
        self._reports = reports
        self._cached: tuple[Snapshot, SnapshotMemory] | None = None

    def of(self, kernel_id: str) -> KernelMemory:
        """GPU memory held by the kernel: NVML's figures for its PIDs, else its reporter's (where
        NVML's PIDs cannot be matched, e.g. inside a container, or NVML has no figure)."""
        snapshot = self._latest()
        cached = self._cached
        if cached is None or cached[0] is not snapshot:
            cached = self._cached = (snapshot, SnapshotMemory(snapshot.gpus))
        reported = (self._reports.get(kernel_id) or {}).get("devices", {})
        return cached[1].of(kernel_id, reported)

"""GPU memory each kernel holds, worked out once per snapshot and shared by every view.

A kernel's figure on a GPU is NVML's (its process tree's PIDs) or, where NVML's PIDs cannot be
matched (a container without the host's PIDs) or NVML has no figure, the one its frameworks
report from inside the kernel. That second kind is only as good as the kernel's cooperation: a
notebook that stops its reporter stops it. So where the report was the figure and it stops
arriving, the kernel's memory is "unknown", never 0; and where a GPU's process list could not
be read this round (``GpuReading.processes_stale``), the kernels that may use that GPU are
"unknown" too (the kept list may be up to a minute old). Every view says so, and the enforcer
neither starts nor ends an episode on an unknown figure.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Mapping, Sequence

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
    """GPU memory held by one kernel, per GPU and in total (bytes), and why it is unknown now
    (None when it is known)."""

    per_gpu: tuple[GpuMemory, ...] = ()
    unknown: str | None = None

    @property
    def source(self) -> str | None:
        """Where the known figures come from: "nvml", "kernel_report", "mixed" (some GPUs each
        way), or None when no GPU has a figure for the kernel."""
        sources = {g.source for g in self.per_gpu if g.used_memory is not None}
        if len(sources) > 1:
            return "mixed"
        return next(iter(sources), None)

    @property
    def known(self) -> list[int]:
        """The per-GPU figures that are known."""
        return [g.used_memory for g in self.per_gpu if g.used_memory is not None]

    @property
    def total(self) -> int:
        """Bytes held over all GPUs, counting only known figures."""
        return sum(self.known)

    def as_dict(self) -> dict[str, Any]:
        """As the API shows it: ``{"total", "source", "unknown", "per_gpu": [...]}``."""
        return {
            "total": self.total,
            "source": self.source,
            "unknown": self.unknown,
            "per_gpu": [g.as_dict() for g in self.per_gpu],
        }


@dataclass(frozen=True)
class _GpuHoldings:
    """One GPU of a snapshot: its keys and, per kernel, the PIDs NVML attributed to it by PID."""

    index: int
    uuid: str
    keys: frozenset[str]
    pids: Mapping[str, list[int]]  # kernel id -> its PIDs on this GPU
    figures: Mapping[str, list[int]]  # kernel id -> the known figures of those PIDs
    stale: str | None  # why its process list is not this round's, if it is not


class SnapshotMemory:
    """Every kernel's GPU memory in one snapshot, read from its GPU readings once."""

    def __init__(self, gpus: Sequence[GpuReading]) -> None:
        self._gpus = [_holdings(gpu) for gpu in gpus]
        # kernel id -> (what it was worked out with, the result)
        self._memo: dict[str, tuple[Any, KernelMemory]] = {}

    def of(
        self,
        kernel_id: str,
        reported: Mapping[str, int],
        devices: Collection[str] | None = None,
    ) -> KernelMemory:
        """One kernel's memory, given what its own reporter says it holds ({GPU key: bytes}) and
        the GPUs it may use (their keys; None: any GPU)."""
        key = (dict(reported), None if devices is None else frozenset(devices))
        memo = self._memo.get(kernel_id)
        if memo is not None and memo[0] == key:
            return memo[1]
        per_gpu = []
        stale = []
        for gpu in self._gpus:
            pids = sorted(gpu.pids.get(kernel_id, ()))
            used = gpu.figures.get(kernel_id)
            from_report = [held for name, held in reported.items() if name in gpu.keys]
            if used:
                row = (sum(used), "nvml")
            elif from_report:
                # NVML lists none of the kernel's PIDs here, or gives no figure for them (N/A).
                row = (sum(from_report), "kernel_report")
            elif pids:
                row = (None, "nvml")
            else:
                row = None
            if gpu.stale and (row is None or row[1] == "nvml") and _may_use(devices, gpu.keys):
                stale.append(f"GPU {gpu.index}'s process list could not be read ({gpu.stale})")
            if row is not None:
                per_gpu.append(GpuMemory(gpu.index, gpu.uuid, row[0], row[1], tuple(pids)))
        memory = KernelMemory(tuple(per_gpu), "; ".join(stale) or None)
        self._memo[kernel_id] = (key, memory)
        return memory


def _may_use(devices: Collection[str] | None, keys: frozenset[str]) -> bool:
    """Whether a kernel that may use ``devices`` (None: any) may use the GPU named by ``keys``."""
    return devices is None or any(device in keys for device in devices)


def _holdings(gpu: GpuReading) -> _GpuHoldings:
    pids: dict[str, list[int]] = {}
    figures: dict[str, list[int]] = {}
    for proc in gpu.processes:
        if proc.attributed_by != "pid" or proc.kernel_id is None:
            continue
        pids.setdefault(proc.kernel_id, []).append(proc.pid)
        if proc.used_memory is not None:
            figures.setdefault(proc.kernel_id, []).append(proc.used_memory)
    return _GpuHoldings(gpu.index, gpu.uuid, gpu_keys(gpu), pids, figures, gpu.processes_stale)


class KernelMemoryReader:
    """Each kernel's GPU memory in the sampler's latest snapshot, worked out once per snapshot
    (the sampler publishes a new ``Snapshot`` object each round) and per report it is given.

    It remembers, per kernel, the GPUs where the kernel's own report was its figure, so that a
    report that stops arriving makes the figure unknown rather than 0.
    """

    def __init__(self, latest: Callable[[], Snapshot], reports: KernelReports) -> None:
        self._latest = latest
        self._reports = reports
        self._cached: tuple[Snapshot, SnapshotMemory] | None = None
        # kernel id -> (GPUs whose figure was its report, when that report was received)
        self._reported: dict[str, tuple[frozenset[str], float]] = {}
        self._lock = threading.Lock()

    def of(self, kernel_id: str, devices: Collection[str] | None = None) -> KernelMemory:
        """GPU memory held by the kernel: NVML's figures for its PIDs, else its reporter's (where
        NVML's PIDs cannot be matched, e.g. inside a container, or NVML has no figure).

        ``devices``: the GPUs the kernel may use (UUIDs or indices, as its policy names them);
        None when it may use any.
        """
        snapshot = self._latest()
        cached = self._cached
        if cached is None or cached[0] is not snapshot:
            cached = self._cached = (snapshot, SnapshotMemory(snapshot.gpus))
        report = self._reports.get(kernel_id)
        reported = (report or {}).get("devices", {})
        memory = cached[1].of(kernel_id, reported, devices)
        by_report = frozenset(g.uuid for g in memory.per_gpu if g.source == "kernel_report")
        with self._lock:
            if report is not None:
                if by_report:
                    self._reported[kernel_id] = (by_report, report["received"])
                else:
                    self._reported.pop(kernel_id, None)
                return memory
            silent = self._reported.get(kernel_id)
            if silent is not None:
                # NVML has a figure again where the report was the figure: NVML's it is now.
                nvml = {g.uuid for g in memory.per_gpu if g.used_memory is not None}
                left = silent[0] - nvml
                if left:
                    self._reported[kernel_id] = silent = (left, silent[1])
                else:
                    del self._reported[kernel_id]
                    silent = None
        if silent is None:
            return memory
        age = max(0.0, self._reports.clock() - silent[1])
        why = (
            f"its own GPU memory report, the only figure for it on GPU {_indices(silent[0], snapshot)}, "
            f"stopped arriving ({age:.0f} s since the last one)"
        )
        return replace(memory, unknown="; ".join(filter(None, (memory.unknown, why))))

    def forget(self, kernel_id: str) -> None:
        """The kernel stopped or restarted: what its previous process reported no longer holds."""
        with self._lock:
            self._reported.pop(kernel_id, None)

    def kernel_ids(self) -> set[str]:
        """The kernels anything is kept for."""
        with self._lock:
            return set(self._reported)


def _indices(uuids: frozenset[str], snapshot: Snapshot) -> str:
    """The GPUs' indices in the snapshot, joined (UUIDs that are gone as they are)."""
    by_uuid = {gpu.uuid: str(gpu.index) for gpu in snapshot.gpus}
    return ", ".join(sorted(by_uuid.get(uuid, uuid) for uuid in uuids))

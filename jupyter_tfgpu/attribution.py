"""Who holds the GPU: GPU process -> kernel (its process tree) -> notebook.

The server knows each kernel's PID; NVML knows the PIDs using each GPU. A GPU process belongs
to a kernel when it is the kernel process or one of its descendants (DataLoader workers,
multiprocessing, ``!python train.py``). PIDs are paired with their start time, so a PID the
OS reused for an unrelated process is never taken for a dead kernel's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import psutil


@dataclass(frozen=True)
class KernelProcess:
    """A kernel this server started, as attribution needs it."""

    kernel_id: str
    pid: int
    started: float  # the process's create_time, to tell it from a later process with its PID
    notebook: str | None = None


def process_start(pid: int) -> float | None:
    """A process's create_time, or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Attribution:
    """Maps GPU process PIDs to this server's kernels; safe to use from the sampler thread."""

    def __init__(
        self, reports: Callable[[], dict[str, dict[str, Any]]] = dict
    ) -> None:
        # kernel id -> {"devices": {uuid: bytes}}: what kernels' own reporters say they hold
        self._reports = reports
        self._kernels: dict[int, KernelProcess] = {}
        # (pid, create_time) -> kernel id or None; emptied whenever the kernels change
        self._cache: dict[tuple[int, float], str | None] = {}
        self._lock = threading.Lock()

    @property
    def kernels(self) -> list[KernelProcess]:
        """The kernels currently known."""
        return list(self._kernels.values())

    def set_kernels(self, kernels: list[KernelProcess]) -> None:
        """Replace the known kernels (after a kernel starts, restarts or stops)."""
        by_pid = {k.pid: k for k in kernels}
        with self._lock:
            if by_pid != self._kernels:
                self._kernels = by_pid
                self._cache = {}

    def kernel_pids(self) -> list[int]:
        """PIDs of the known kernel processes."""
        return list(self._kernels)

    def owner(self, pid: int) -> KernelProcess | None:
        """The kernel whose process tree holds ``pid``, if any."""
        with self._lock:
            kernels = self._kernels
        started = process_start(pid)
        if started is None:
            return None  # e.g. a host PID seen from inside a container
        key = (pid, started)
        if key in self._cache:
            kernel_id = self._cache[key]
            return next((k for k in kernels.values() if k.kernel_id == kernel_id), None)
        found = self._walk(pid, started, kernels)
        with self._lock:
            if kernels is self._kernels:
                self._cache[key] = found.kernel_id if found else None
        return found

    def _walk(
        self, pid: int, started: float, kernels: dict[int, KernelProcess]
    ) -> KernelProcess | None:
        chain: list[tuple[int, float]] = [(pid, started)]
        try:
            chain += [(p.pid, p.create_time()) for p in psutil.Process(pid).parents()]
        except psutil.Error:
            pass
        for member_pid, member_started in chain:
            kernel = kernels.get(member_pid)
            # Same PID and same start time: the very process the kernel manager started.
            if kernel is not None and abs(kernel.started - member_started) < 0.01:
                return kernel
        return None

    def annotate(self, snapshot: dict[str, Any]) -> None:
        """Fill ``kernel_id``, ``notebook`` and ``attributed_by`` of each GPU process.

        First by PID (the kernel's process tree). Processes left over, e.g. host PIDs seen
        from inside a container, are matched with the kernels whose own reporter says they
        hold memory on that GPU, largest with largest.
        """
        for gpu in snapshot.get("gpus", ()):
            for proc in gpu.get("processes", ()):
                proc.setdefault("attributed_by", None)
        if not self._kernels:
            return
        by_id = {k.kernel_id: k for k in self._kernels.values()}
        reports = self._reports() or {}
        for gpu in snapshot.get("gpus", ()):
            processes = gpu.get("processes", ())
            for proc in processes:
                kernel = self.owner(proc["pid"])
                if kernel is not None:
                    proc.update(kernel_id=kernel.kernel_id, notebook=kernel.notebook, attributed_by="pid")
            if reports:
                self._match_reports(gpu, processes, reports, by_id)

    def _match_reports(
        self,
        gpu: dict[str, Any],
        processes: list[dict[str, Any]],
        reports: dict[str, dict[str, Any]],
        kernels: dict[str, KernelProcess],
    ) -> None:
        # A reporter names a GPU by UUID where it knows one, else by its index (as
        # KernelRegistry.gpu_memory also accepts).
        uuids = {gpu.get("uuid"), str(gpu.get("index"))} | {
            m["uuid"] for m in ((gpu.get("mig") or {}).get("instances") or ())
        }
        seen = {p["kernel_id"] for p in processes if p.get("kernel_id")}
        claims = sorted(
            (
                (sum(held for uuid, held in report["devices"].items() if uuid in uuids), kernel_id)
                for kernel_id, report in reports.items()
                if kernel_id in kernels and kernel_id not in seen
                and any(uuid in uuids for uuid in report["devices"])
            ),
            reverse=True,
        )
        unmatched = sorted(
            (p for p in processes if not p.get("kernel_id")),
            key=lambda p: p.get("used_memory") or 0,
            reverse=True,
        )
        for proc, (_, kernel_id) in zip(unmatched, claims):
            kernel = kernels[kernel_id]
            proc.update(kernel_id=kernel_id, notebook=kernel.notebook, attributed_by="kernel_report")

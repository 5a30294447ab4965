"""Who holds the GPU: GPU process -> kernel (its process tree) -> notebook.

The server knows each kernel's PID; NVML knows the PIDs using each GPU. A GPU process belongs
to a kernel when it is the kernel process or one of its descendants (DataLoader workers,
multiprocessing, ``!python train.py``). PIDs are paired with their start time, so a PID the
OS reused for an unrelated process is never taken for a dead kernel's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

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

    def __init__(self) -> None:
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
        """Fill ``kernel_id`` and ``notebook`` of each GPU process in a snapshot."""
        if not self._kernels:
            return
        for gpu in snapshot.get("gpus", ()):
            for proc in gpu.get("processes", ()):
                kernel = self.owner(proc["pid"])
                if kernel is not None:
                    proc["kernel_id"] = kernel.kernel_id
                    proc["notebook"] = kernel.notebook

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


def _ppid_map() -> dict[int, int]:
    """PID -> parent PID of every process, read in one pass over /proc."""
    reader = getattr(psutil, "_ppid_map", None)  # psutil's own one-pass reader
    if reader is not None:
        try:
            return dict(reader())
        except Exception:  # noqa: BLE001 - fall back to the public, slower way
            pass
    return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"])}


class Attribution:
    """Maps GPU process PIDs to this server's kernels; safe to use from the sampler thread.

    Each sample checks that every kernel process is still the one the kernel manager started
    (same PID, same start time) and drops those that are not, so a PID the OS reused after a
    kernel died is never taken for that kernel. GPU PIDs already seen in the previous sample
    keep their answer; new ones are resolved with one pass over the process table.
    """

    def __init__(
        self, reports: Callable[[], dict[str, dict[str, Any]]] = dict
    ) -> None:
        # kernel id -> {"devices": {uuid: bytes}}: what kernels' own reporters say they hold
        self._reports = reports
        self._kernels: dict[int, KernelProcess] = {}
        # GPU PID -> kernel id (or None), for the PIDs of the previous sample
        self._cache: dict[int, str | None] = {}
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

    def _live_kernels(self) -> dict[int, KernelProcess]:
        """The kernels whose PID still belongs to the process the kernel manager started."""
        with self._lock:
            kernels = self._kernels
        live = {}
        for pid, kernel in kernels.items():
            started = process_start(pid)
            if started is not None and abs(started - kernel.started) < 0.01:
                live[pid] = kernel
        if len(live) != len(kernels):
            with self._lock:
                if self._kernels is kernels:
                    self._kernels = live
                    self._cache = {}
        return live

    def owners(self, pids: list[int]) -> dict[int, KernelProcess | None]:
        """The kernel whose process tree holds each PID (None for other processes)."""
        kernels = self._live_kernels()
        by_id = {k.kernel_id: k for k in kernels.values()}
        with self._lock:
            cache = dict(self._cache)
        answers: dict[int, str | None] = {}
        new = [pid for pid in pids if pid not in cache]
        parents = _ppid_map() if new and kernels else {}
        for pid in pids:
            if pid in cache:
                answers[pid] = cache[pid]
                continue
            answers[pid] = None
            # Walk up the tree in memory; a cycle or a missing parent ends the walk.
            seen, current = set(), pid
            while current and current not in seen:
                if current in kernels:
                    answers[pid] = kernels[current].kernel_id
                    break
                seen.add(current)
                current = parents.get(current, 0)
        with self._lock:
            self._cache = answers  # only the PIDs of this sample: gone PIDs are forgotten
        return {pid: by_id.get(kernel_id) if kernel_id else None for pid, kernel_id in answers.items()}

    def owner(self, pid: int) -> KernelProcess | None:
        """The kernel whose process tree holds one PID, if any."""
        return self.owners([pid]).get(pid)

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
        pids = [p["pid"] for gpu in snapshot.get("gpus", ()) for p in gpu.get("processes", ())]
        owners = self.owners(pids)
        for gpu in snapshot.get("gpus", ()):
            processes = gpu.get("processes", ())
            for proc in processes:
                kernel = owners.get(proc["pid"])
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

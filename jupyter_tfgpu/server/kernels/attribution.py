"""Who holds the GPU: GPU process -> kernel (its process tree) -> notebook.

The server knows each kernel's PID; NVML knows the PIDs using each GPU. A GPU process belongs
to a kernel when it is the kernel process or one of its descendants (DataLoader workers,
multiprocessing, ``!python train.py``). PIDs are paired with their start time, so a PID the
OS reused for an unrelated process is never taken for a dead kernel's.

A process the notebook detached (``setsid``, a double fork) is no longer in the kernel's tree.
It is still found by its session (a double fork keeps the kernel's session), or else by the
kernel id the provisioner put in the kernel's environment (``TFGPU_KERNEL_ID``), which every
descendant inherits.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import psutil

from jupyter_tfgpu.gpu.keys import gpu_keys
from jupyter_tfgpu.gpu.readings import GpuReading, ProcessReading
from jupyter_tfgpu.protocol import KERNEL_ID_ENV


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


def start_times(pids: Iterable[int]) -> dict[int, float | None]:
    """Each process's create_time (None if it is gone); blocking (/proc), so call it in a thread."""
    return {pid: process_start(pid) for pid in pids}


@dataclass(frozen=True)
class EnvClaim:
    """What a process's environment says about the kernel it belongs to."""

    kernel_id: str | None
    started: float
    uid: int | None


def read_claim(pid: int) -> EnvClaim | None:
    """The kernel id in a process's start-up environment; None if it is gone or unreadable."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            started = proc.create_time()
            uid = proc.uids().real
        environ = proc.environ()  # /proc/PID/environ: as the process was started
    except (psutil.Error, OSError):
        return None
    return EnvClaim(environ.get(KERNEL_ID_ENV), started, uid)


def session_of(pid: int) -> int | None:
    """The session id of a process, or None if it is gone."""
    try:
        return os.getsid(pid)
    except OSError:
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
        self,
        reports: Callable[[], dict[str, dict[str, Any]]] = dict,
        uid: int | None = None,
    ) -> None:
        # kernel id -> {"devices": {uuid: bytes}}: what kernels' own reporters say they hold
        self._reports = reports
        self._uid = os.getuid() if uid is None else uid  # the server's user, who runs the kernels
        self._kernels: dict[int, KernelProcess] = {}
        # kernel id -> start of its first process seen: a restart keeps the notebook's
        # detached processes of before the restart
        self._first_started: dict[str, float] = {}
        # GPU PID -> kernel id (or None), for the PIDs of the previous sample
        self._cache: dict[int, str | None] = {}
        # (PID, start time) -> what its environment claims, read once per process
        self._claims: dict[tuple[int, float], EnvClaim | None] = {}
        self._lock = threading.Lock()

    @property
    def kernels(self) -> list[KernelProcess]:
        """The kernels currently known."""
        return list(self._kernels.values())

    def set_kernels(self, kernels: list[KernelProcess]) -> None:
        """Replace the known kernels (after a kernel starts, restarts or stops)."""
        by_pid = {k.pid: k for k in kernels}
        with self._lock:
            first = self._first_started
            self._first_started = {
                k.kernel_id: min(first.get(k.kernel_id, k.started), k.started) for k in kernels
            }
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
        """The kernel each PID belongs to (None for other processes).

        First the kernel's process tree, then its session, then the kernel id in the
        process's environment: the first two a process cannot forge, the last it can.
        """
        kernels = self._live_kernels()
        by_id = {k.kernel_id: k for k in kernels.values()}
        with self._lock:
            cache = dict(self._cache)
        answers: dict[int, str | None] = {}
        new = [pid for pid in pids if pid not in cache]
        parents = _ppid_map() if new and kernels else {}
        claims: dict[tuple[int, float], EnvClaim | None] = {}
        for pid in pids:
            if pid in cache:
                answers[pid] = cache[pid]
                continue
            answers[pid] = self._in_tree(pid, kernels, parents)
            if answers[pid] is None and kernels:
                answers[pid] = self._detached(pid, kernels, by_id, claims)
        with self._lock:
            self._cache = answers  # only the PIDs of this sample: gone PIDs are forgotten
            kept = {key: claim for key, claim in self._claims.items() if key[0] in answers}
            self._claims = {**kept, **claims}
        return {pid: by_id.get(kernel_id) if kernel_id else None for pid, kernel_id in answers.items()}

    @staticmethod
    def _in_tree(pid: int, kernels: dict[int, KernelProcess], parents: dict[int, int]) -> str | None:
        # Walk up the tree in memory; a cycle or a missing parent ends the walk.
        seen, current = set(), pid
        while current and current not in seen:
            if current in kernels:
                return kernels[current].kernel_id
            seen.add(current)
            current = parents.get(current, 0)
        return None

    def _detached(
        self,
        pid: int,
        kernels: dict[int, KernelProcess],
        by_id: dict[str, KernelProcess],
        claims: dict[tuple[int, float], EnvClaim | None],
    ) -> str | None:
        """The kernel of a process outside every kernel's tree (detached, or reparented)."""
        # The kernel manager starts each kernel as a session leader, and a double fork keeps
        # the session: the kernel's PID is the session id. While any process is in that
        # session the OS does not hand the number to another process, so this cannot be forged.
        session = session_of(pid)
        if session in kernels:
            return kernels[session].kernel_id
        # setsid makes a new session: what is left is the kernel id the process inherited.
        started = process_start(pid)
        if started is None:
            return None
        key = (pid, started)
        if key not in claims:
            claims[key] = self._claims[key] if key in self._claims else read_claim(pid)
        claim = claims[key]
        kernel = by_id.get(claim.kernel_id) if claim and claim.kernel_id else None
        if kernel is None:
            return None
        # A process can put any kernel id in its environment and charge its memory to that
        # kernel (whose notebook may then be capped or reaped). Accepted only from processes
        # of the server's own user, started after the kernel was: a process of another user
        # (a server run as root reads everyone's environment) never counts. The residual
        # risk: code of this server's user can charge another of this server's kernels; that
        # user can signal or kill those kernels anyway, so it gains nothing it did not have.
        # A notebook that detaches AND clears its environment (env -i setsid ...) is not found.
        first = self._first_started.get(kernel.kernel_id, kernel.started)
        if claim.uid != self._uid or claim.started + 0.01 < first:
            return None
        return kernel.kernel_id

    def annotate(self, gpus: Sequence[GpuReading]) -> tuple[GpuReading, ...]:
        """The readings with ``kernel_id``, ``notebook`` and ``attributed_by`` of each GPU
        process filled in (copies; the readings given are not changed).

        First by PID (the kernel's process tree). Processes left over, e.g. host PIDs seen
        from inside a container, are matched with the kernels whose own reporter says they
        hold memory on that GPU, largest with largest.
        """
        gpus = tuple(gpus)
        if not self._kernels:
            return gpus
        by_id = {k.kernel_id: k for k in self._kernels.values()}
        reports = self._reports() or {}
        owners = self.owners([p.pid for gpu in gpus for p in gpu.processes])
        attributed = []
        for gpu in gpus:
            processes = [_owned(p, owners.get(p.pid), "pid") for p in gpu.processes]
            if reports:
                self._match_reports(gpu, processes, reports, by_id)
            if any(new is not old for new, old in zip(processes, gpu.processes)):
                gpu = replace(gpu, processes=tuple(processes))
            attributed.append(gpu)
        return tuple(attributed)

    def _match_reports(
        self,
        gpu: GpuReading,
        processes: list[ProcessReading],
        reports: dict[str, dict[str, Any]],
        kernels: dict[str, KernelProcess],
    ) -> None:
        """Give the GPU's processes no PID matched to the kernels that report memory there."""
        keys = gpu_keys(gpu)  # a reporter names a GPU by any of them
        seen = {p.kernel_id for p in processes if p.kernel_id}
        claims = sorted(
            (
                (sum(held for uuid, held in report["devices"].items() if uuid in keys), kernel_id)
                for kernel_id, report in reports.items()
                if kernel_id in kernels and kernel_id not in seen
                and any(uuid in keys for uuid in report["devices"])
            ),
            reverse=True,
        )
        unmatched = sorted(
            (n for n, p in enumerate(processes) if not p.kernel_id),
            key=lambda n: processes[n].used_memory or 0,
            reverse=True,
        )
        for n, (_, kernel_id) in zip(unmatched, claims):
            processes[n] = _owned(processes[n], kernels[kernel_id], "kernel_report")


def _owned(proc: ProcessReading, kernel: KernelProcess | None, how: str) -> ProcessReading:
    """The process as owned by ``kernel`` (found by ``how``); unchanged without a kernel."""
    if kernel is None:
        return proc
    return proc.owned_by(kernel.kernel_id, kernel.notebook, how)

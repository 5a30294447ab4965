"""Automatic GPU placement: pick the GPUs for a kernel with ``devices: "auto"`` when it starts.

Kernels started together must not all pick "the emptiest" GPU from the same snapshot: each
pick is recorded as a reservation (its kernel and the memory it may use) that the following
picks count, until the sampler sees the kernel on its GPU or the kernel goes away. A kernel
without a memory limit may use the whole GPU, so its reservation claims all the free memory
there, and keeps claiming it while the kernel runs there (seen using little so far, it may
still take the GPU whole).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jupyter_tfgpu.gpu import MiB
from jupyter_tfgpu.gpu.readings import GpuReading

STRATEGIES = ("most_free_memory", "fewest_kernels", "pack")
# A reservation the sampler has not confirmed by then is dropped (the kernel failed to start,
# or never touched its GPU: then it holds nothing there to count).
RESERVATION_SECONDS = 120.0


@dataclass
class Candidate:
    """A GPU (or MIG slice) a kernel could be placed on."""

    uuid: str
    index: int
    free: int
    total: int
    kernels: set[str]


@dataclass
class Reservation:
    """A placement not yet visible in the snapshots."""

    uuids: tuple[str, ...]
    memory: int | None  # bytes; None: no limit, the kernel may take all the GPU's free memory
    made: float


class Placement:
    """Chooses GPUs for kernels, race-safe across kernels starting at once."""

    def __init__(
        self, gpus: Callable[[], Sequence[GpuReading]], strategy: str = "most_free_memory"
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"placement strategy must be one of {STRATEGIES}, not {strategy!r}")
        self.strategy = strategy
        self._gpus = gpus  # the latest snapshot's readings
        self._reserved: dict[str, Reservation] = {}
        self._lock = threading.Lock()

    def candidates(self, allowed: set[str] | None) -> list[Candidate]:
        """GPUs and MIG slices from the latest snapshot, minus lost and excluded ones."""
        found = []
        for gpu in self._gpus():
            if gpu.lost:
                continue
            units = []
            if gpu.mig is not None and gpu.mig.enabled:
                for inst in gpu.mig.instances:
                    owners = {
                        p.kernel_id for p in gpu.processes if p.kernel_id and p.mig == inst.index
                    }
                    free = inst.memory.free if inst.memory is not None else None
                    units.append((inst.uuid, free, inst.instance.memory_total, owners))
            else:
                owners = {p.kernel_id for p in gpu.processes if p.kernel_id}
                units.append((gpu.uuid, gpu.memory.free, gpu.memory.total, owners))
            for uuid, free, total, owners in units:
                if allowed is not None and uuid not in allowed:
                    continue
                found.append(Candidate(uuid, gpu.index, free or 0, total or 0, set(owners)))
        return found

    def choose(
        self,
        kernel_id: str,
        count: int,
        memory_limit_mb: int | None,
        allowed: set[str] | None = None,
    ) -> dict[str, Any]:
        """Pick ``count`` GPUs for a kernel; returns ``{"chosen", "strategy", "reason"}``."""
        with self._lock:
            now = time.monotonic()
            candidates = self.candidates(allowed)
            self._expire(now, candidates)
            memory = memory_limit_mb * MiB if memory_limit_mb else None
            for other, reservation in self._reserved.items():
                if other == kernel_id:
                    continue
                for cand in candidates:
                    if cand.uuid not in reservation.uuids:
                        continue
                    seen = other in cand.kernels
                    cand.kernels.add(other)
                    if reservation.memory is None:  # it may take the GPU whole, seen or not
                        cand.free = min(cand.free, 0)
                    elif not seen:  # once seen, the snapshot's free memory counts it
                        cand.free -= reservation.memory
            ranked = sorted(candidates, key=self._rank(memory or 0))
            chosen = [c.uuid for c in ranked[:count]]
            self._reserved[kernel_id] = Reservation(tuple(chosen), memory, now)
        reason = None
        if len(chosen) < count:
            reason = f"asked for {count} GPU(s), {len(chosen)} available"
        return {"strategy": self.strategy, "requested": count, "chosen": chosen, "reason": reason}

    def _rank(self, memory: int) -> Callable[[Candidate], tuple]:
        if self.strategy == "fewest_kernels":
            return lambda c: (len(c.kernels), -c.free, c.index)
        if self.strategy == "pack":
            return self._pack_rank(memory)
        return lambda c: (-c.free, len(c.kernels), c.index)

    @staticmethod
    def _pack_rank(memory: int) -> Callable[[Candidate], tuple]:
        # Fullest GPU that still has room for the kernel's limit (any free memory for a kernel
        # without one); GPUs already in use first, to keep empty GPUs for big jobs. A GPU
        # reserved by a kernel without a limit has no room left: that kernel may take it whole,
        # so pack does not stack a second kernel there while another GPU has room (stacking
        # would only pack the two into one out-of-memory). When no GPU has room, the load is
        # spread: fewest kernels, then most free memory.
        def rank(c: Candidate) -> tuple:
            if c.free >= max(memory, 1):
                return (0, len(c.kernels) == 0, c.free, c.index)
            return (1, len(c.kernels), -c.free, c.index)

        return rank

    def _expire(self, now: float, candidates: list[Candidate]) -> None:
        # A kernel without a limit keeps its claim while the snapshots show it on its GPU (it
        # may use little yet, and take the GPU whole later), until it goes (release()).
        seen = {k for c in candidates for k in c.kernels}
        for kernel_id, reservation in list(self._reserved.items()):
            if kernel_id in seen:
                if reservation.memory is not None:
                    del self._reserved[kernel_id]
            elif now - reservation.made > RESERVATION_SECONDS:
                del self._reserved[kernel_id]

    def reserved(self) -> list[str]:
        """The kernels whose placement the snapshots do not show yet."""
        with self._lock:
            return list(self._reserved)

    def release(self, kernel_id: str) -> None:
        """The kernel is gone."""
        with self._lock:
            self._reserved.pop(kernel_id, None)

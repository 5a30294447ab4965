"""Reading a round: the due groups of every GPU, each with the backend method its row names.

A field that fails is null with its reason; a group that fails as a whole is null (the process
list stale) while the round goes on; a GPU that stops answering is lost until it is opened again.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

from jupyter_tfgpu.gpu import Backend, GpuLost
from jupyter_tfgpu.server.sampling.gpu_state import GpuState
from jupyter_tfgpu.server.sampling.groups import FAST, PROCESSES, SamplingGroup
from jupyter_tfgpu.server.sampling.opening import lost_retry_at, reopen_lost


class FailureLog:
    """Logs a failed reading once per GPU, field and reason; the snapshot says it every time."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._said: set[tuple[int, str, str]] = set()

    def warn(self, index: int, path: str, reason: str) -> None:
        """Log that GPU ``index``'s ``path`` is null for ``reason``, unless that was said."""
        key = (index, path, reason)
        if key not in self._said:
            self._said.add(key)
            self.log.warning("GPU %d %s: %s (null until it answers again)", index, path, reason)


def read_round(
    backend: Backend,
    gpus: Sequence[GpuState],
    due: Sequence[SamplingGroup],
    now: float,
    intervals: Mapping[str, float],
    timer: Callable[[], float],
    failures: FailureLog,
) -> dict[str, dict[int, float]]:
    """Read the due groups of every GPU (a lost one when its retry is due); the seconds each
    group took per GPU, by group name. ``intervals`` are the groups' as planned now."""
    log = failures.log
    spent: dict[str, dict[int, float]] = {group.name: {} for group in due}
    processes_interval = intervals[PROCESSES.name]
    for gpu in gpus:
        if gpu.lost:
            answered, seconds = reopen_lost(backend, gpu, now, timer)
            if seconds is not None and FAST.name in spent:
                # the driver time it took is the fast group's, for the budget
                spent[FAST.name][gpu.info.index] = seconds
            if not answered:
                gpu.lost_round(now, processes_interval)
                continue
        index = gpu.info.index
        try:
            for group in due:
                started = timer()
                try:
                    read_group(backend, gpu, group, now, failures)
                except GpuLost:
                    raise
                except Exception as err:  # noqa: BLE001 - nulls this group, not the round
                    reason = f"{type(err).__name__}: {err}"
                    gpu.failed(group, reason, now, intervals[group.name])
                    failures.warn(index, group.name, reason)
                finally:
                    per_gpu = spent[group.name]
                    per_gpu[index] = per_gpu.get(index, 0.0) + timer() - started
            if gpu.lost:
                log.warning("GPU %d answers again", gpu.info.index)
            gpu.lost, gpu.lost_reason = False, None
        except GpuLost as err:
            if not gpu.lost:
                log.error("GPU %d is lost: %s", gpu.info.index, err.reason)
            gpu.went_lost(err.reason, now, lost_retry_at(now), processes_interval)
    return spent


def read_group(
    backend: Backend, gpu: GpuState, group: SamplingGroup, now: float, failures: FailureLog
) -> None:
    """Read one group of one GPU with the backend method its row names."""
    index = gpu.info.index
    reading = getattr(backend, group.read)(index)
    for path, reason in gpu.took(group, reading, now).items():
        failures.warn(index, path, reason)
    # A reading may have found new facts (MIG instances made since, on a process-list read).
    gpu.info = backend.device_info(index)

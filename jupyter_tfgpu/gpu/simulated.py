"""Simulated GPUs for demos, binder and tests, labelled as such everywhere.

The GPUs are fake but what they show is not: each simulated GPU holds the processes the
server handed it (its kernels), a process's "GPU memory" is the real resident memory of its
process tree, and GPU utilization follows the real CPU use of those processes. A notebook that
allocates 500 MB is seen on its GPU, so attribution, caps and reaping work end to end.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from dataclasses import replace
from typing import Any, Callable, Iterable

import psutil

from jupyter_tfgpu.gpu.backend import DeviceInfo, GiB, MiB
from jupyter_tfgpu.gpu.group_readings import (
    ClockSpeeds,
    FastReading,
    InterconnectReading,
    SlowReading,
)
from jupyter_tfgpu.gpu.readings import (
    MemoryReading,
    NvlinkReading,
    PcieReading,
    PowerReading,
    ProcessReading,
    ProcessUtilization,
    UtilizationReading,
)

_NAMESPACE = uuidlib.UUID("6b1d3f0e-3c55-4f43-9d5e-1f1f0a7a6a11")
# Memory the "driver" holds on an idle simulated GPU, like a real context-free GPU shows.
_BASELINE_USED = 300 * MiB
_POWER_LIMIT_W = 300.0
_MAX_SM_MHZ = 1980
_MAX_MEM_MHZ = 1593
# Simulated GPUs of a multi-GPU server are NVLink-bridged, 4 links each, up to 25 GB/s a way.
_NVLINK_LINKS = 4
_NVLINK_BYTES_PER_S = 25e9


def simulated_uuid(name: str, index: int) -> str:
    """A stable UUID in NVML's format for simulated GPU ``index``."""
    return f"GPU-{uuidlib.uuid5(_NAMESPACE, f'{name}/{index}')}"


def expand_gpu_list(spec: list[dict[str, Any]]) -> list[DeviceInfo]:
    """Turn ``[{"name", "memory_gb", "count"}]`` into numbered devices."""
    devices: list[DeviceInfo] = []
    for entry in spec:
        name = entry.get("name", "Simulated GPU")
        total = int(float(entry.get("memory_gb", 16)) * GiB)
        for _ in range(int(entry.get("count", 1))):
            index = len(devices)
            devices.append(
                DeviceInfo(
                    index=index,
                    uuid=simulated_uuid(name, index),
                    name=name,
                    memory_total=total,
                    power_limit=_POWER_LIMIT_W,
                    max_clocks={"sm": _MAX_SM_MHZ, "memory": _MAX_MEM_MHZ},
                    mig_mode=False,
                )
            )
    if len(devices) > 1:
        return [replace(d, nvlink_links=_NVLINK_LINKS) for d in devices]
    return [replace(d, nvlink_reason="this GPU has no NVLink") for d in devices]


class SimulatedBackend:
    """A backend whose GPUs are simulated and whose processes are real."""

    name = "simulated"
    simulated = True

    def __init__(
        self,
        gpus: list[dict[str, Any]],
        pid_source: Callable[[], Iterable[int]] = tuple,
    ) -> None:
        self._spec = gpus
        self._pid_source = pid_source
        self._devices: list[DeviceInfo] = []
        self._procs: dict[int, psutil.Process] = {}
        # Per GPU: the processes of the last process read and their CPU percent, which the
        # fast fields sum up.
        self._rows: dict[int, list[tuple[ProcessReading, float]]] = {}
        self._lock = threading.Lock()
        # GPU index -> (monotonic seconds, bytes sent, bytes received) over NVLink so far
        self._nvlink: dict[int, tuple[float, float, float]] = {}

    def open(self) -> list[DeviceInfo]:
        """Build the configured GPUs."""
        self._devices = expand_gpu_list(self._spec)
        self._rows = {d.index: [] for d in self._devices}
        return list(self._devices)

    def reopen(self, index: int) -> DeviceInfo:
        """A simulated GPU is never lost: its facts as built."""
        return self._devices[index]

    def device_info(self, index: int) -> DeviceInfo:
        """The facts as built; they never change."""
        return self._devices[index]

    def close(self) -> None:
        """Nothing to release."""

    def versions(self) -> dict[str, str | None]:
        """A simulated GPU has no driver."""
        return {"driver": None, "nvml": None, "cuda": None}

    # -- readings ----------------------------------------------------------------------------

    def _busy(self, index: int) -> float:
        with self._lock:
            rows = list(self._rows.get(index, ()))
        return min(100.0, sum(cpu for _, cpu in rows))

    def read_fast(self, index: int) -> FastReading:
        """Memory = baseline + the real resident memory of the processes on this GPU."""
        total = self._devices[index].memory_total or 0
        with self._lock:
            held = sum(row.used_memory or 0 for row, _ in self._rows.get(index, ()))
        used = min(total, _BASELINE_USED + held)
        busy = self._busy(index)
        return FastReading(
            memory=MemoryReading(total, used, total - used, 0),
            utilization=UtilizationReading(round(busy), round(busy * 0.6)),
        )

    def read_slow(self, index: int) -> SlowReading:
        """Temperature, power, fan and clocks as plain functions of utilization."""
        busy = self._busy(index) / 100
        return SlowReading(
            temperature=round(32 + 45 * busy),
            power=PowerReading(round(40 + (_POWER_LIMIT_W - 40) * busy, 1), _POWER_LIMIT_W),
            fan=round(30 + 60 * busy),
            clocks=ClockSpeeds(round(210 + (_MAX_SM_MHZ - 210) * busy), _MAX_MEM_MHZ),
        )

    def read_pcie(self, index: int) -> InterconnectReading:
        """Throughput proportional to utilization (simulated), NVLink's too where bridged."""
        busy = self._busy(index) / 100
        pcie = PcieReading(int(2e9 * busy), int(6e9 * busy))
        links = self._devices[index].nvlink_links
        if not links:
            return InterconnectReading(pcie)
        now = time.monotonic()
        rate = _NVLINK_BYTES_PER_S * busy
        then, sent, received = self._nvlink.get(index, (now, 0.0, 0.0))
        sent += rate * (now - then)
        received += rate * 0.8 * (now - then)
        self._nvlink[index] = (now, sent, received)
        nvlink = NvlinkReading(
            links, links, int(rate), int(rate * 0.8), tx_total=int(sent), rx_total=int(received)
        )
        return InterconnectReading(pcie, nvlink)

    def read_processes(self, index: int) -> tuple[ProcessReading, ...]:
        """The kernel processes placed on this GPU, with their trees' real memory."""
        if index == 0:
            # One pass over all processes serves every GPU; the sampler reads GPU 0 first.
            self._refresh_rows()
        with self._lock:
            return tuple(row for row, _ in self._rows[index])

    def _refresh_rows(self) -> None:
        rows: dict[int, list[tuple[ProcessReading, float]]] = {d.index: [] for d in self._devices}
        alive: dict[int, psutil.Process] = {}
        for pid in set(self._pid_source()):
            proc = self._procs.get(pid) or _process(pid)
            if proc is None:
                continue
            alive[pid] = proc
            placement = self._placement(proc)
            if not placement:
                continue
            memory, cpu = _tree_usage(proc)
            row = ProcessReading(
                pid, memory, "compute", None, ProcessUtilization(min(100, round(cpu)), None)
            )
            for index in placement:
                rows[index].append((row, cpu))
        with self._lock:
            self._procs = alive
            self._rows = rows

    def _placement(self, proc: psutil.Process) -> list[int]:
        """GPUs a process may use: its CUDA_VISIBLE_DEVICES, else GPU 0 (as a default
        framework would pick); empty for CPU-only processes."""
        try:
            visible = proc.environ().get("CUDA_VISIBLE_DEVICES")
        except (psutil.Error, OSError):
            visible = None
        if visible is None:
            return [0] if self._devices else []
        chosen: list[int] = []
        for token in (t.strip() for t in visible.split(",")):
            if not token:
                continue
            match = [d.index for d in self._devices if d.uuid == token or str(d.index) == token]
            if not match:
                break  # CUDA stops at the first invalid entry
            chosen.append(match[0])
        return chosen


def _process(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        proc.cpu_percent(None)  # prime the CPU counter
        return proc
    except psutil.Error:
        return None


def _tree_usage(proc: psutil.Process) -> tuple[int | None, float]:
    """Resident memory (bytes) and CPU percent of a process and all its descendants."""
    memory = 0
    cpu = 0.0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None, 0.0
    for member in members:
        try:
            with member.oneshot():
                memory += member.memory_info().rss
                cpu += member.cpu_percent(None) if member is proc else 0.0
        except psutil.Error:
            continue
    return memory, cpu

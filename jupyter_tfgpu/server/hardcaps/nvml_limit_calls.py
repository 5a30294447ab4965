"""NVML's memory limits on a cgroup (driver R615+, nvidia-ml-py 13.615.71+), set per GPU.

``nvmlDeviceSetMemoryLimits_v1(device, limits)`` takes the binding's ``c_nvmlSetMemoryLimits_v1_t``
by reference: ``nameSpace`` is the cgroup's folder (bytes), ``softLimit`` and ``hardLimit`` are
bytes. Soft 0 with hard ``NVML_DEVICE_MEMORY_LIMIT_MAX`` clears them. Setting needs root;
reading (``nvmlDeviceGetMemoryLimits_v1``, which adds ``currentUsed``) does not. Every call
blocks in the driver: the mechanism makes them in its worker thread.

NVML's codes for these calls are not documented; ``words`` says what the documentation and
NVML's usual codes give reason to expect, and NVML's own text beside it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

NO_LIMIT = 0xFFFFFFFFFFFFFFFF  # NVML_DEVICE_MEMORY_LIMIT_MAX
# What an NVML error on these calls means, by the binding's class name.
MEANINGS = {
    "NVMLError_NoPermission": "setting an NVML memory limit needs root",
    "NVMLError_NotFound": "the cgroup has no dmem files (dmem is not enabled above it)",
    "NVMLError_FunctionNotFound": "the driver has no NVML memory limits (they came with R615)",
    "NVMLError_NotSupported": "this GPU takes no NVML memory limit (a MIG device does not)",
    "NVMLError_InvalidArgument": "NVML refused the limit's values",
    "NVMLError_GpuIsLost": "the GPU has fallen off the bus",
}


@dataclass(frozen=True)
class LimitReading:
    """A cgroup's limits on one GPU, and what its processes use there (bytes)."""

    soft: int
    hard: int  # NO_LIMIT: none
    used: int


class NvmlLimitCalls:
    """The memory-limit calls, with NVML opened for as long as the mechanism runs."""

    def __init__(self, load: Callable[[], Any] = lambda: importlib.import_module("pynvml")):
        self._load = load
        self.nvml: Any = None

    def open(self) -> None:
        """Initialise NVML (its reference count; the sampler holds its own)."""
        nvml = self._load()
        if not hasattr(nvml, "nvmlDeviceSetMemoryLimits_v1"):
            raise RuntimeError("nvidia-ml-py has no nvmlDeviceSetMemoryLimits_v1 (13.615.71+)")
        nvml.nvmlInit()
        self.nvml = nvml

    def close(self) -> None:
        """Shut down what open() initialised."""
        nvml, self.nvml = self.nvml, None
        if nvml is not None:
            nvml.nvmlShutdown()

    def handle(self, gpu: str) -> Any:
        """The handle of a GPU named by its UUID, or by its index where no UUID was known."""
        if gpu.startswith("MIG-"):
            raise RuntimeError(f"{gpu} is a MIG device: NVML memory limits take no MIG handle")
        if gpu.isdigit():
            return self.nvml.nvmlDeviceGetHandleByIndex(int(gpu))
        return self.nvml.nvmlDeviceGetHandleByUUID(gpu)

    def set(self, handle: Any, cgroup: Path, hard: int, soft: int = 0) -> None:
        """Limit what the cgroup's processes may hold on the GPU to ``hard`` bytes."""
        limits = self.nvml.c_nvmlSetMemoryLimits_v1_t()
        limits.nameSpace = str(cgroup).encode()
        limits.softLimit, limits.hardLimit = soft, hard
        self.nvml.nvmlDeviceSetMemoryLimits_v1(handle, limits)

    def clear(self, handle: Any, cgroup: Path) -> None:
        """Clear the cgroup's limits on the GPU: soft to 0, hard to none (NVML's way)."""
        self.set(handle, cgroup, NO_LIMIT, 0)

    def read(self, handle: Any, cgroup: Path) -> LimitReading:
        """The cgroup's limits on the GPU, and what it uses there."""
        limits = self.nvml.c_nvmlGetMemoryLimits_v1_t()
        limits.nameSpace = str(cgroup).encode()
        self.nvml.nvmlDeviceGetMemoryLimits_v1(handle, limits)
        return LimitReading(limits.softLimit, limits.hardLimit, limits.currentUsed)

    def words(self, err: BaseException) -> str:
        """An error of these calls, said: what it means here, and NVML's own text."""
        for name, meaning in MEANINGS.items():
            cls = getattr(self.nvml, name, None) if self.nvml is not None else None
            if isinstance(cls, type) and isinstance(err, cls):
                return f"{meaning} (NVML: {err})"
        return str(err) or type(err).__name__

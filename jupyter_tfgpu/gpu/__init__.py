"""GPU backends. Nothing in this package knows about Jupyter."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from jupyter_tfgpu.gpu.backend import (
    Backend,
    BackendUnavailable,
    DeviceInfo,
    GiB,
    GpuLost,
    MiB,
    MigInstance,
)
from jupyter_tfgpu.gpu.nvml import NvmlBackend
from jupyter_tfgpu.gpu.simulated import SimulatedBackend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "DeviceInfo",
    "GiB",
    "GpuLost",
    "MiB",
    "MigInstance",
    "NvmlBackend",
    "SimulatedBackend",
    "make_backend",
]


def make_backend(
    name: str,
    simulated_gpus: list[dict[str, Any]] | None = None,
    pid_source: Callable[[], Iterable[int]] = tuple,
) -> Backend | None:
    """The backend for a configured name; ``None`` for "none". ``auto`` starts as NVML."""
    if name in ("auto", "nvml"):
        return NvmlBackend()
    if name == "simulated":
        return SimulatedBackend(simulated_gpus or [], pid_source=pid_source)
    return None

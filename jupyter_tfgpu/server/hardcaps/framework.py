"""Mode ``off``: no driver limit; a kernel's cap is held by its framework settings alone.

``framework_enforcement`` says how those settings hold a kernel, GPU by GPU. Every mechanism
uses it for what it does not hold itself, and the service uses it for a kernel whose mechanism
failed at its start (``why_not_driver`` then says what failed), so a kernel always starts with
its cooperative settings and a level that says so.
"""

from __future__ import annotations

from typing import Sequence

from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.server.hardcaps.mechanism import MechanismStatus, Prepared, StartingKernel

FRAMEWORK_SETTINGS = "framework_settings"
HELD_BY_SETTINGS = (
    "the framework settings (TensorFlow, PyTorch, JAX) hold it: code in the kernel can undo "
    "them, and allocators that read none of them (CuPy, Numba, raw CUDA) pass them"
)
NO_CAP = "no memory cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb"
CPU_ONLY = (
    "CPU only: CUDA_VISIBLE_DEVICES hides every GPU from it, which code in the kernel can "
    "change before CUDA starts"
)
NO_GPU_KNOWN = "no GPU is known to this server; the framework settings hold each GPU it finds"


def _not_python(language: str | None) -> str:
    return (
        f"a {language or 'non-Python'} kernel: the framework settings reach the Python "
        "processes it starts, not its own GPU allocations"
    )


def framework_enforcement(kernel: StartingKernel, why_not_driver: str | None = None) -> CapEnforcement:
    """How the framework settings hold ``kernel``'s cap on each GPU it may use; each reason
    starts with ``why_not_driver`` when given (a mechanism that could not hold it)."""

    def said(reason: str) -> str:
        return f"{why_not_driver}; {reason}" if why_not_driver else reason

    if kernel.launch.devices == []:
        return CapEnforcement.without_gpus("framework", FRAMEWORK_SETTINGS, said(CPU_ONLY))
    if kernel.memory_limit_mb is None:
        level, mechanism, reason = "none", None, NO_CAP
    elif not kernel.python:
        level, mechanism, reason = "none", None, _not_python(kernel.language)
    else:
        level, mechanism, reason = "framework", FRAMEWORK_SETTINGS, HELD_BY_SETTINGS
    gpus = kernel.gpus
    if not gpus:
        if level == "framework":
            reason = NO_GPU_KNOWN
        return CapEnforcement.without_gpus(level, mechanism, said(reason))
    return CapEnforcement.of(GpuEnforcement(gpu, level, mechanism, said(reason)) for gpu in gpus)


class FrameworkSettings:
    """The ``off`` mechanism: nothing to start, set or undo; framework settings only."""

    def __init__(self, context: object = None) -> None:
        self.context = context

    def start(self) -> None:
        """Nothing runs for it."""

    def stop(self) -> None:
        """Nothing was started."""

    def prepare(self, kernel: StartingKernel) -> Prepared:
        """The kernel's framework settings are already in its environment; say how they hold."""
        return Prepared(framework_enforcement(kernel))

    def release(self, kernel_id: str) -> None:
        """Nothing was set for it."""

    def before_signal(self, kernel_id: str, pids: Sequence[int]) -> None:
        """Signals need nothing first."""

    def status(self) -> MechanismStatus:
        """Always in force: there is nothing that could fail."""
        return MechanismStatus(
            "running", "no driver limit is set: framework settings and the enforcer hold caps"
        )

"""What ``%tfgpu`` and the panel say beside the GPUs: why there is none (a GPU-less server, or a
backend that failed), why placement found none, where this kernel's memory figure comes from, and
what its cap leaves its frameworks (and a warning when it leaves no room for the CUDA context)."""

from __future__ import annotations

from typing import Any

from jupyter_tfgpu.in_kernel.units import format_mib

# Backends an admin can name; one named and failing is a fault, not a GPU-less server.
BACKEND_NAMES = {"nvml": "NVML", "simulated": "the simulated backend"}


def availability(status: dict[str, Any]) -> tuple[str, bool] | None:
    """Why there is no GPU data (None when there is), and whether it is a fault to show loudly:
    the admin named a backend and it failed, rather than a server that simply has no GPU."""
    if status.get("available", bool(status.get("gpus"))):
        return None
    reason = status.get("reason") or "no GPU backend"
    named = BACKEND_NAMES.get(status.get("configured_backend") or "")
    if named is None:
        return f"No GPU: {reason}.", False
    retry = status.get("retry_in")
    again = (
        f"; the server tries again in {max(1, round(retry))} s"
        if isinstance(retry, (int, float))
        else ""
    )
    return (
        f"GPU monitoring failed: this server is set to use {named}, which did not start: "
        f"{reason}{again}.",
        True,
    )


def launch_of(kernel: dict[str, Any] | None) -> dict[str, Any]:
    """What this kernel's process started with: the launch document (the policy, placement, cap
    facts) that the server's kernel view calls ``applied``; {} when it gives none. Not to be
    mixed up with a framework's ``applied`` settings in the bootstrap's record."""
    return (kernel or {}).get("applied") or {}


def placement_note(kernel: dict[str, Any] | None) -> str | None:
    """Why a kernel that asked for GPUs by placement (``devices: "auto"``) got none."""
    placement = launch_of(kernel).get("placement")
    if not isinstance(placement, dict) or placement.get("chosen"):
        return None
    reason = str(placement.get("reason") or "no GPU was free")
    # With no strategy the server could not place at all, and its reason says what follows.
    cpu = "" if placement.get("strategy") is None else "; this kernel runs on the CPU only"
    return f"GPU placement: {reason}{cpu}."


def memory_source_note(kernel: dict[str, Any] | None) -> tuple[str, bool] | None:
    """What to say of where this kernel's GPU memory figure comes from, and whether it is a
    warning: unknown now, or its frameworks' own report; None when NVML gives it (or nothing)."""
    memory = (kernel or {}).get("gpu_memory") or {}
    if memory.get("unknown"):
        return f"This kernel's GPU memory is unknown right now: {memory['unknown']}.", True
    if memory.get("source") not in ("kernel_report", "mixed"):
        return None
    gpus = sorted(
        str(g.get("index"))
        for g in memory.get("per_gpu") or ()
        if g.get("source") == "kernel_report" and g.get("used_memory") is not None
    )
    where = f"GPU {', '.join(gpus)}" if gpus else "its GPUs"
    return (
        f"This kernel's GPU memory on {where} is its frameworks' own report, sent from inside "
        "the kernel: the server cannot match the GPU's processes to it (as in a container "
        "without the host's PIDs). The figure leaves out the CUDA context.",
        False,
    )


def _mib(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def cap_line(kernel: dict[str, Any] | None) -> str | None:
    """This kernel's cap as it started with it, what its frameworks get under it and the room left
    for the CUDA context (and how that was found), as the lab says it; None without a cap."""
    launch = launch_of(kernel)
    cap = launch.get("memory_limit_mb")
    if not _mib(cap):
        return None
    said = f"This kernel runs with a cap of {format_mib(cap)} per GPU"
    framework, reserve = launch.get("framework_limit_mb"), launch.get("context_reserve_mb")
    # A cap with no room for the context (cap_note warns of it), or a launch from an older server.
    if launch.get("memory_limit_note") or not _mib(framework) or not _mib(reserve):
        return f"{said}."
    source = launch.get("context_reserve_source") or "starting value"
    if source == "simulated":
        return f"{said} (simulated GPUs: no CUDA context, frameworks get all of it)."
    where = (
        f"measured on {launch.get('context_reserve_measured_on') or 'these GPUs'}"
        if source == "measured"
        else "starting value"
    )
    return (
        f"{said} (frameworks get {format_mib(framework)}; {format_mib(reserve)} left for the CUDA "
        f"context, {where})."
    )


def cap_note(kernel: dict[str, Any] | None) -> str | None:
    """What to say when this kernel's cap leaves no room for the CUDA context; None otherwise."""
    note = launch_of(kernel).get("memory_limit_note")
    return f"This kernel's cap: {note}." if isinstance(note, str) and note else None

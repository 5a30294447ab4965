"""What ``%tfgpu`` and the panel say beside the GPUs: why there is none (a GPU-less server, or a
backend that failed), why placement found none, where this kernel's memory figure comes from,
what its cap leaves its frameworks (and a warning when it leaves no room for the CUDA context),
how its cap is enforced (hard cap, cooperative or no cap, and why it is not hard), and, below an
out-of-memory error, which limit it hit on that GPU and where that limit is set."""

from __future__ import annotations

import re
from typing import Any

from jupyter_tfgpu.in_kernel.gpu_rows import GpuRow
from jupyter_tfgpu.in_kernel.units import MiB, format_bytes, format_mib

# Backends an admin can name; one named and failing is a fault, not a GPU-less server.
BACKEND_NAMES = {"nvml": "NVML", "simulated": "the simulated backend"}
# Each enforcement level in the UI's words: a copy of the server's LEVELS labels
# (policy/cap_enforcement.py), which this side may not import; a test pins the two.
LEVEL_LABELS = {"driver": "hard cap", "framework": "cooperative", "none": "no cap"}
# What holds a cap, after "held by", by the API's mechanism name (its MECHANISMS).
MECHANISM_WORDS = {
    "nvml_memory_limit": "an NVML memory limit on the kernel's cgroup, set in the driver",
    "mps": "an MPS memory limit, set in the driver",
    "framework_settings": "the framework settings (TensorFlow, PyTorch, JAX)",
}
# What holds a cap, in a word or two (the per-GPU note).
MECHANISM_SHORT: dict[str | None, str] = {
    "nvml_memory_limit": "NVML memory limit",
    "mps": "MPS",
    "framework_settings": "framework settings",
    None: "nothing",
}
# The mechanisms that set a limit in the driver, as a sentence names them.
DRIVER_LIMITS = {"mps": "MPS", "nvml_memory_limit": "NVML"}
MAX_REASON = 1000  # characters of a reason shown; the server's are a sentence


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


def _enforcement(said: Any) -> dict[str, Any] | None:
    """``said`` if it is an enforcement the server could have written, else None: the launch
    in TFGPU_POLICY is the kernel's own to rewrite."""
    if not isinstance(said, dict):
        return None
    level, mechanism, reason = said.get("level"), said.get("mechanism"), said.get("reason")
    if level not in LEVEL_LABELS or (mechanism is not None and mechanism not in MECHANISM_WORDS):
        return None
    if level == "driver":
        ok = reason is None
    else:
        ok = isinstance(reason, str) and 0 < len(reason) <= MAX_REASON
    return {"level": level, "mechanism": mechanism, "reason": reason} if ok else None


def enforcement_of(
    kernel: dict[str, Any] | None, running: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """How this kernel's cap is enforced (level, mechanism, reason): as the server says it now,
    else as the launch it started with says (the server's ``applied``, or ``running``: this
    process's TFGPU_POLICY); None when none of them says it."""
    for said in (
        (kernel or {}).get("enforcement"),
        launch_of(kernel).get("enforcement"),
        (running or {}).get("enforcement"),
    ):
        if (found := _enforcement(said)) is not None:
            return found
    return None


def enforcement_line(enforcement: dict[str, Any] | None) -> str | None:
    """The level, what holds the cap and why it is not hard, as the lab's tooltip says it."""
    if enforcement is None:
        return None
    level, mechanism, reason = (enforcement.get(k) for k in ("level", "mechanism", "reason"))
    held = MECHANISM_WORDS.get(mechanism or "", "nothing")
    if level == "driver":
        held = held if mechanism else "the driver"
        return (
            f"Hard cap, held by {held}: the driver refuses any allocation past it, whatever the "
            "framework."
        )
    if level == "none":
        # The server's reason may start by saying there is no cap: not said twice.
        why = re.sub(
            r"^no (memory )?cap: ", "", reason or "nothing limits its allocations", flags=re.I
        )
        return f"No cap: {why}."
    return f"Cooperative cap, held by {held}. Not a hard cap: {reason}."


def per_gpu_note(
    kernel: dict[str, Any] | None, running: dict[str, Any] | None, rows: list[GpuRow]
) -> str | None:
    """How each GPU holds the cap, when the kernel's GPUs are not all held alike (its overall
    level is the weakest of theirs); None when they are."""
    launch = launch_of(kernel)
    if not launch.get("enforcement"):
        launch = running or {}
    named = {row.uuid: row.index for row in rows} | {str(row.index): row.index for row in rows}
    said = []
    for gpu in (launch.get("enforcement") or {}).get("gpus") or ():
        held = _enforcement(gpu)
        if held is not None and isinstance(gpu.get("gpu"), str):
            index = named.get(gpu["gpu"], gpu["gpu"])
            label = LEVEL_LABELS[held["level"]]
            said.append((f"GPU {index}", f"{label} ({MECHANISM_SHORT[held['mechanism']]})"))
    if len({how for _, how in said}) < 2:
        return None
    return "Per GPU: " + ", ".join(f"{gpu} {how}" for gpu, how in said) + "."


def _gpu_enforcement(
    kernel: dict[str, Any] | None, running: dict[str, Any] | None, row: GpuRow
) -> dict[str, Any] | None:
    """How the cap was enforced on this GPU as the kernel started (the launch's row for it, by
    UUID or index), else the kernel's overall enforcement."""
    for launch in (launch_of(kernel), running or {}):
        for gpu in (launch.get("enforcement") or {}).get("gpus") or ():
            if isinstance(gpu, dict) and gpu.get("gpu") in (row.uuid, str(row.index)):
                return _enforcement(gpu)
    return enforcement_of(kernel, running)


def limit_line(
    kernel: dict[str, Any] | None,
    running: dict[str, Any] | None,
    row: GpuRow,
    requested: int | None,
    framework: str,
) -> str | None:
    """Below ``framework``'s out-of-memory error on ``row``'s GPU: whether this kernel hit the
    limit it started with there, and where that limit is set (the driver, or the framework's
    own setting); None without a limit on that GPU, or when the figures explain nothing."""
    launch = launch_of(kernel) or running or {}
    cap, own = launch.get("memory_limit_mb"), launch.get("framework_limit_mb")
    held = _gpu_enforcement(kernel, running, row)
    if not _mib(cap) or held is None or held["mechanism"] is None:
        return None
    where = f"on GPU {row.index}"
    if held["mechanism"] in DRIVER_LIMITS:
        what, how = "limit", f"set in the driver ({DRIVER_LIMITS[held['mechanism']]})"
        reaches = cap * MiB  # the driver counts all of the kernel's memory, as NVML does
    else:
        gets = f" ({framework} gets {format_mib(own)} of it)" if _mib(own) and own != cap else ""
        what = "cap"
        how = f"held by {framework}'s own limit{gets}, a framework setting, not a driver limit"
        # The frameworks' own report leaves out the CUDA context: it meets their limit
        own_figure = row.mine_source == "kernel_report" and _mib(own)
        reaches = (own if own_figure else cap) * MiB
    if row.mine is None or requested is None:
        if what == "cap":
            return f"This kernel's {format_mib(cap)} cap {where} is {how}."
        return (
            f"This kernel's {format_mib(cap)} limit {where} is {how}: an allocation that would "
            "take it past the limit fails there, whatever the framework."
        )
    holds = format_bytes(row.mine)
    if row.mine + requested > reaches:
        return (
            f"This kernel hit its {format_mib(cap)} {what} {where}, {how}: it holds {holds} there "
            f"and the allocation asked for {format_bytes(requested)} more."
        )
    free = None if row.total is None or row.used is None else row.total - row.used
    if free is not None and free < requested:
        return (
            f"This kernel was within its {format_mib(cap)} {what} {where}, {how}, holding "
            f"{holds} there: the GPU itself ran out."
        )
    return None

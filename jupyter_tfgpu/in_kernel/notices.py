"""Why ``%tfgpu`` and the panel show no GPU: a GPU-less server, or a backend that failed."""

from __future__ import annotations

from typing import Any

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


def placement_note(kernel: dict[str, Any] | None) -> str | None:
    """Why a kernel that asked for GPUs by placement (``devices: "auto"``) got none."""
    placement = ((kernel or {}).get("applied") or {}).get("placement")
    if not isinstance(placement, dict) or placement.get("chosen"):
        return None
    reason = str(placement.get("reason") or "no GPU was free")
    # With no strategy the server could not place at all, and its reason says what follows.
    cpu = "" if placement.get("strategy") is None else "; this kernel runs on the CPU only"
    return f"GPU placement: {reason}{cpu}."

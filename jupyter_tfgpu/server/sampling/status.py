"""The sampler's status in words and figures: GET status's ``sampler``, and each snapshot's
``cadence`` (how often GPU figures refresh now, and why less often than configured)."""

from __future__ import annotations

from typing import Any

from jupyter_tfgpu.server.sampling.budget import GroupStats
from jupyter_tfgpu.server.sampling.groups import FAST
from jupyter_tfgpu.server.sampling.schedule import Schedule


def describe(
    schedule: Schedule,
    *,
    rounds: int,
    history_bytes: int,
    watched: bool,
    elapsed: float,
    gpu_count: int,
) -> dict[str, Any]:
    """What the sampler measured, for ``GET status`` (``elapsed``: seconds since it was made)."""
    stats = schedule.stats
    inside = sum(s.seconds for s in stats.values())
    return {
        "nvml_budget": schedule.budget,
        "backend_time_fraction": round(inside / max(elapsed, 1e-9), 6),
        "rounds": rounds,
        "history_bytes": history_bytes,
        "groups": {
            name: {
                "interval": round(s.interval, 3),
                "configured_interval": s.desired,
                "max_interval": s.max_interval,
                "stretched": stretched(s),
                "cost_ms": round(s.cost * 1000, 3),
                "measured_ms": round(s.last * 1000, 3),
                "calls": s.calls,
            }
            for name, s in stats.items()
        },
        "over_budget": schedule.plan.over_budget({n: s.cost for n, s in stats.items()}),
        "stretch_reason": stretch_reason(schedule, gpu_count),
        "pcie_watched": watched,
    }


def cadence(schedule: Schedule, gpu_count: int) -> dict[str, Any] | None:
    """The fast group's cadence for each snapshot; None before the GPUs are open."""
    if not gpu_count:
        return None
    fast = schedule.stats[FAST.name]
    return {
        "interval": round(fast.interval, 3),
        "configured_interval": fast.desired,
        "stretch_reason": stretch_reason(schedule, gpu_count),
    }


def stretched(stats: GroupStats) -> bool:
    """Whether the budget stretched the group's interval past its configured one."""
    return stats.interval > stats.desired * 1.001


def stretch_reason(schedule: Schedule, gpu_count: int) -> str | None:
    """Why GPU figures refresh less often than configured, in words; None when they do not."""
    fast = schedule.stats[FAST.name]
    if not stretched(fast):
        return None
    share = fast.cost / fast.desired
    text = (
        f"GPU figures refresh every {fast.interval:.1f} s instead of {fast.desired:g} s: "
        f"reading {gpu_count} GPU(s) takes {fast.cost * 1000:.1f} ms in the driver, "
        f"{share:.1%} of the time at {fast.desired:g} s, over the {schedule.budget:.1%} "
        "driver-time budget (TFGPU.nvml_budget)"
    )
    if fast.max_interval is not None and fast.interval >= fast.max_interval * 0.999:
        text += (
            f"; held at the {fast.max_interval:g} s freshness floor, which spends more than "
            "the budget"
        )
    return text + "."

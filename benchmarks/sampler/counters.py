"""What the sections read off the server: the fake NVML's counters and the sampler's groups."""

from __future__ import annotations

import time
from typing import Any

from _harness import FakeServer


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, rounded for the report."""
    return None if seconds is None else round(seconds * 1000, 2)


def window(server: FakeServer, seconds: float) -> dict[str, Any]:
    """NVML calls and time over ``seconds`` of wall time (server clock)."""
    before = server.nvml()
    time.sleep(seconds)
    after = server.nvml()
    return delta(before, after)


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Rates between two /bench/nvml readings."""
    wall = after["monotonic"] - before["monotonic"]
    by_function = {
        name: after["by_function"].get(name, 0) - before["by_function"].get(name, 0)
        for name in after["by_function"]
    }
    return {
        "wall_s": round(wall, 3),
        "calls": after["calls"] - before["calls"],
        "calls_per_s": round((after["calls"] - before["calls"]) / wall, 3),
        "nvml_s": round(after["call_time"] - before["call_time"], 5),
        "nvml_fraction": round((after["call_time"] - before["call_time"]) / wall, 5),
        "by_function": {k: v for k, v in sorted(by_function.items()) if v},
    }


def sampler_groups(server: FakeServer) -> dict[str, Any]:
    """The sampler's planned intervals and measured costs (from GET tfgpu/api/status)."""
    described = server.get("tfgpu/api/status")["sampler"]
    return {
        "groups": {n: {"interval": g["interval"], "cost_ms": g["cost_ms"]} for n, g in described["groups"].items()},
        "backend_time_fraction": described["backend_time_fraction"],
    }

"""Sections a and b: NVML calls per second by client count, NVML time against the budget."""

from __future__ import annotations

import time
from typing import Any

from _harness import FakeServer
from _streams import StreamClients

from .counters import delta, sampler_groups, window

SLOW_MARKER = "nvmlDeviceGetTemperature"  # read once per GPU in every slow-group round
GPUS = 8


def after_slow_round(server: FakeServer, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the sampler finishes its next slow-group round; the reading just after it.

    Windows bounded by slow rounds hold whole slow (and process-list) cycles, so the 5-s
    cadences cannot alias with the window and fake a difference between client counts.
    """
    first = server.nvml()["by_function"].get(SLOW_MARKER, 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if server.nvml()["by_function"].get(SLOW_MARKER, 0) >= first + GPUS:
            time.sleep(0.3)  # the rest of that round (process lists: ~80 ms) ends well before the next tick
            return server.nvml()
    raise RuntimeError(f"no slow-group round within {timeout} s")


def section_a(server: FakeServer, cycles: int, settle: float) -> dict[str, Any]:
    """Backend calls per second with 1, 10 and 50 streaming clients, over whole slow cycles."""
    rows = {}
    for clients in (1, 10, 50):
        with StreamClients(server, clients) as streams:
            time.sleep(settle)
            start = after_slow_round(server)
            end = start
            for _ in range(cycles):
                end = after_slow_round(server)
            rows[clients] = delta(start, end)
            rows[clients]["rounds"] = {
                "fast": rows[clients]["by_function"].get("nvmlDeviceGetUtilizationRates", 0) // GPUS,
                "slow": rows[clients]["by_function"].get(SLOW_MARKER, 0) // GPUS,
                "processes": rows[clients]["by_function"].get("nvmlDeviceGetComputeRunningProcesses_v3", 0) // GPUS,
            }
        rows[clients]["messages_per_client"] = streams.summary.get("messages")
    rates = [r["calls_per_s"] for r in rows.values()]
    spread = max(rates) / min(rates) - 1 if min(rates) > 0 else None
    return {
        "slow_cycles_per_window": cycles,
        "by_clients": rows,
        "spread": None if spread is None else round(spread, 4),
        "flat_within_10pct": spread is not None and spread <= 0.10,
        "sampler": sampler_groups(server),
    }


def section_b(seconds_off: float, seconds_on: float, burst: float, settle: float) -> dict[str, Any]:
    """NVML time per wall time without and with one client watching PCIe (fresh server)."""
    with FakeServer() as server:
        with StreamClients(server, 1):
            time.sleep(settle)
            off = window(server, seconds_off)
            off_sampler = sampler_groups(server)
        start = server.nvml()
        with StreamClients(server, 1, pcie=1):
            ready = time.monotonic()
            time.sleep(burst)
            first = server.nvml()
            time.sleep(max(0.0, seconds_on - (time.monotonic() - ready)))
            end = server.nvml()
            on_sampler = sampler_groups(server)
        budget = server.get("tfgpu/api/status")["sampler"]["nvml_budget"]
    on = delta(start, end)
    return {
        "nvml_budget": budget,
        "without_pcie": {**off, "sampler": off_sampler},
        "with_pcie": {**on, "sampler": on_sampler},
        "with_pcie_first_seconds": {"seconds": burst, **delta(start, first)},
        "within_budget": off["nvml_fraction"] <= budget and on["nvml_fraction"] <= budget,
    }

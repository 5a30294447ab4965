"""Section e: the server process's CPU with no clients and with 50 streaming clients."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _harness import FakeServer
from _pyspy import PySpy
from _streams import StreamClients


def cpu_window(server: FakeServer, seconds: float) -> dict[str, Any]:
    """Server process CPU (user+system, all threads) over ``seconds``, as % of one core."""
    import psutil

    proc = psutil.Process(server.pid)
    nvml0, cpu0, wall0 = server.nvml(), proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = proc.cpu_times(), time.monotonic()
    nvml1 = server.nvml()
    wall = wall1 - wall0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    nvml_s = nvml1["call_time"] - nvml0["call_time"]
    return {
        "seconds": round(wall, 2),
        "cpu_pct_of_one_core": round(100 * cpu / wall, 3),
        "user_pct": round(100 * (cpu1.user - cpu0.user) / wall, 3),
        "system_pct": round(100 * (cpu1.system - cpu0.system) / wall, 3),
        "nvml_pct": round(100 * nvml_s / wall, 3),
        "cpu_excluding_nvml_pct": round(100 * (cpu - nvml_s) / wall, 3),
    }


def section_e(seconds: float, idle_seconds: float, settle: float, profile: Path | None) -> dict[str, Any]:
    """Server CPU with --no-latency: no clients, then 50 streaming clients (fresh server)."""
    with FakeServer(latency=False, extra=["--TFGPU.sample_interval=1"]) as server:
        time.sleep(settle)
        idle = cpu_window(server, idle_seconds)
        with StreamClients(server, 50) as streams:
            time.sleep(settle)
            busy = cpu_window(server, seconds)
            if profile:  # a separate window: the profiler's own cost stays out of the figure above
                with PySpy(server.pid, profile / "e_clients_50.txt") as spy:
                    time.sleep(min(seconds, 30))
                busy["profile"] = spy.summary()
        busy["messages_per_client"] = streams.summary.get("messages")
    return {"no_clients": idle, "clients_50": busy}

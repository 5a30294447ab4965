"""Benchmark the server core against serve_fake.py (fake NVML, 8 GPUs, spec latencies).

Sections (``--sections a,b,c,d,e``; all by default):
  a  backend calls per second with 1, 10 and 50 websocket clients: flat within 10%?
  b  seconds inside NVML per second of wall time vs nvml_budget, with and without PCIe watched
  c  jupyter_server's GET /api/status p50/p99 while 50 clients stream
  d  GET tfgpu/api/gpus p50/p99 with 64 concurrent clients
  e  server process CPU at sample_interval=1, 8 GPUs, 50 clients, --no-latency (% of one core)

Prints one JSON document, then a markdown table. No assertions: targets are reported, not enforced.
``--quick`` shortens every window for a smoke run (the numbers are then only indicative).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import FakeServer, StreamClients, machine, percentile  # noqa: E402

TARGETS = {
    "a": "calls/s flat within 10% for 1/10/50 clients",
    "b": "NVML time <= nvml_budget (2% of wall time)",
    "c": "/api/status p99 < 50 ms with 50 streaming clients",
    "d": "GET gpus p99 < 20 ms with 64 concurrent clients",
    "e": "server CPU < 2% of one core excluding NVML calls",
}


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


# -- a ---------------------------------------------------------------------------------------


def section_a(server: FakeServer, seconds: float, settle: float) -> dict[str, Any]:
    """Backend calls per second with 1, 10 and 50 streaming clients."""
    rows = {}
    for clients in (1, 10, 50):
        with StreamClients(server, clients) as streams:
            time.sleep(settle)
            rows[clients] = window(server, seconds)
        rows[clients]["messages_per_client"] = streams.summary.get("messages")
    rates = [r["calls_per_s"] for r in rows.values()]
    spread = max(rates) / min(rates) - 1 if min(rates) > 0 else None
    return {
        "window_s": seconds,
        "by_clients": rows,
        "spread": None if spread is None else round(spread, 4),
        "flat_within_10pct": spread is not None and spread <= 0.10,
        "sampler": sampler_groups(server),
    }


# -- b ---------------------------------------------------------------------------------------


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


# -- c ---------------------------------------------------------------------------------------


def section_c(server: FakeServer, count: int, pace: float, max_seconds: float, settle: float) -> dict[str, Any]:
    """Sequential, paced GET /api/status on a keep-alive connection while 50 clients stream."""
    times = []
    with StreamClients(server, 50) as streams:
        time.sleep(settle)
        server.get("bench/requests?reset=1")
        deadline = time.monotonic() + max_seconds
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            status, _, seconds = server.request("api/status")
            if status == 200:
                times.append(seconds)
            time.sleep(pace)
        server_side = server.get("bench/requests?reset=1").get("/api/status", {})
    return {
        "requests": len(times),
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "max_ms": ms(max(times) if times else None),
        "server_side": server_side,
        "messages_per_client": streams.summary.get("messages"),
    }


# -- d ---------------------------------------------------------------------------------------


async def _hammer(url: str, headers: dict, concurrency: int, total: int, max_seconds: float) -> dict[str, Any]:
    """``concurrency`` workers each fetching back to back until ``total`` requests are done."""
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    times: list[float] = []
    errors = 0
    remaining = total
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            response = await client.fetch(url, headers=headers, raise_error=False, request_timeout=60)
            if response.code == 200:
                times.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    client.close()
    return {
        "requests": len(times),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(times) / elapsed, 1),
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "max_ms": ms(max(times) if times else None),
    }


async def _paced(url: str, headers: dict, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` pollers, each one GET per second at its own phase (a browser-tab-like load)."""
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient(force_instance=True, max_clients=clients)
    times: list[float] = []
    rounds = max(1, int(seconds))

    async def poller(phase: float) -> None:
        await asyncio.sleep(phase)
        for _ in range(rounds):
            started = time.perf_counter()
            response = await client.fetch(url, headers=headers, raise_error=False, request_timeout=60)
            if response.code == 200:
                times.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))

    await asyncio.gather(*(poller(i / clients) for i in range(clients)))
    client.close()
    return {
        "requests": len(times),
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "max_ms": ms(max(times) if times else None),
    }


def section_d(server: FakeServer, total: int, paced_seconds: float) -> dict[str, Any]:
    """GET tfgpu/api/gpus with 64 concurrent clients: saturating, then paced at 1 Hz each."""
    url = server.url + "tfgpu/api/gpus"
    asyncio.run(_hammer(url, server.headers, 64, 256, 30))  # warm-up
    server.get("bench/requests?reset=1")
    closed = asyncio.run(_hammer(url, server.headers, 64, total, 300))
    closed["server_side"] = server.get("bench/requests?reset=1").get("/tfgpu/api/gpus", {})
    paced = asyncio.run(_paced(url, server.headers, 64, paced_seconds))
    paced["server_side"] = server.get("bench/requests?reset=1").get("/tfgpu/api/gpus", {})
    return {"closed_loop_64": closed, "paced_64_at_1hz": paced}


# -- e ---------------------------------------------------------------------------------------


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


def section_e(seconds: float, idle_seconds: float, settle: float) -> dict[str, Any]:
    """Server CPU with --no-latency: no clients, then 50 streaming clients (fresh server)."""
    with FakeServer(latency=False, extra=["--TFGPU.sample_interval=1"]) as server:
        time.sleep(settle)
        idle = cpu_window(server, idle_seconds)
        with StreamClients(server, 50) as streams:
            time.sleep(settle)
            busy = cpu_window(server, seconds)
        busy["messages_per_client"] = streams.summary.get("messages")
    return {"no_clients": idle, "clients_50": busy}


# -- report ----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """A small table of the headline numbers next to their targets."""
    lines = ["| # | measurement | result | target | met |", "|---|---|---|---|---|"]
    s = result["sections"]
    if "a" in s:
        a = s["a"]
        rates = ", ".join(f"{n}: {r['calls_per_s']:.1f}" for n, r in a["by_clients"].items())
        lines.append(f"| a | NVML calls/s by clients ({rates}) | spread {a['spread']:.1%} | {TARGETS['a']} | {'yes' if a['flat_within_10pct'] else 'NO'} |")
    if "b" in s:
        b = s["b"]
        lines.append(f"| b | NVML time / wall time, no PCIe | {b['without_pcie']['nvml_fraction']:.2%} | {TARGETS['b']} | {'yes' if b['without_pcie']['nvml_fraction'] <= b['nvml_budget'] else 'NO'} |")
        lines.append(f"| b | NVML time / wall time, PCIe watched ({b['with_pcie']['wall_s']:.0f} s) | {b['with_pcie']['nvml_fraction']:.2%} (first {b['with_pcie_first_seconds']['seconds']:.0f} s: {b['with_pcie_first_seconds']['nvml_fraction']:.1%}) | {TARGETS['b']} | {'yes' if b['with_pcie']['nvml_fraction'] <= b['nvml_budget'] else 'NO'} |")
    if "c" in s:
        c = s["c"]
        lines.append(f"| c | GET /api/status p50 / p99, 50 streaming | {c['p50_ms']} / {c['p99_ms']} ms | {TARGETS['c']} | {'yes' if c['p99_ms'] < 50 else 'NO'} |")
    if "d" in s:
        d = s["d"]["closed_loop_64"]
        p = s["d"]["paced_64_at_1hz"]
        lines.append(f"| d | GET gpus p50 / p99, 64 concurrent back to back ({d['throughput_rps']} req/s) | {d['p50_ms']} / {d['p99_ms']} ms | {TARGETS['d']} | {'yes' if d['p99_ms'] < 20 else 'NO'} |")
        lines.append(f"| d | GET gpus p50 / p99, 64 clients at 1 Hz each | {p['p50_ms']} / {p['p99_ms']} ms | (context) | |")
    if "e" in s:
        e = s["e"]["clients_50"]
        lines.append(f"| e | server CPU, 50 clients, no latency (total / excl. NVML) | {e['cpu_pct_of_one_core']:.2f}% / {e['cpu_excluding_nvml_pct']:.2f}% | {TARGETS['e']} | {'yes' if e['cpu_excluding_nvml_pct'] < 2 else 'NO'} |")
        i = s["e"]["no_clients"]
        lines.append(f"| e | server CPU, no clients (total / excl. NVML) | {i['cpu_pct_of_one_core']:.2f}% / {i['cpu_excluding_nvml_pct']:.2f}% | (context) | |")
    return "\n".join(lines)


def main() -> int:
    """Run the chosen sections and print JSON, then markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    parser.add_argument("--sections", default="abcde", help="which sections to run, e.g. 'ab'")
    parser.add_argument("--window", type=float, default=None, help="section a window per client count (s)")
    args = parser.parse_args()
    sections = set(args.sections.replace(",", ""))
    q = args.quick
    settle = 1.0 if q else 3.0
    result: dict[str, Any] = {"machine": machine(), "quick": q, "targets": TARGETS, "sections": {}}
    started = time.monotonic()
    if sections & set("acd"):
        with FakeServer() as server:
            if "a" in sections:
                result["sections"]["a"] = section_a(server, args.window or (5 if q else 20), settle)
            if "c" in sections:
                result["sections"]["c"] = section_c(server, 150 if q else 1000, 0.02, 60, settle)
            if "d" in sections:
                result["sections"]["d"] = section_d(server, 640 if q else 6400, 5 if q else 20)
    if "b" in sections:
        result["sections"]["b"] = section_b(10 if q else 60, 20 if q else 120, 10, settle)
    if "e" in sections:
        result["sections"]["e"] = section_e(15 if q else 60, 5 if q else 30, settle)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

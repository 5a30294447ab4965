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
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import FakeServer, machine, percentile  # noqa: E402
from _pyspy import PySpy  # noqa: E402
from _streams import StreamClients  # noqa: E402

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


async def _keepalive(port: int, path: str, headers: dict, concurrency: int, total: int, max_seconds: float) -> dict[str, Any]:
    """Like ``_hammer``, but each worker keeps one HTTP/1.1 connection open, as browsers do."""
    times: list[float] = []
    errors = 0
    deadline = time.monotonic() + max_seconds
    head = f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    request = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()

    async def worker(count: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(count):
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                writer.write(request)
                header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                length = 0
                for line in header.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await asyncio.wait_for(reader.readexactly(length), 60)
                if header.split(b" ", 2)[1] == b"200":
                    times.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "requests": len(times),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(times) / elapsed, 1),
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "max_ms": ms(max(times) if times else None),
    }


def busy_pct(before: Any, after: Any, wall: float) -> float:
    """user+system CPU between two psutil cpu_times readings, as % of one core."""
    return round(100 * ((after.user - before.user) + (after.system - before.system)) / wall, 1)


def section_d(server: FakeServer, total: int, paced_seconds: float, profile: Path | None) -> dict[str, Any]:
    """GET tfgpu/api/gpus with 64 concurrent clients: saturating (new connection per request, as
    AsyncHTTPClient does; then keep-alive), and paced at 1 Hz each."""
    import psutil

    url = server.url + "tfgpu/api/gpus"
    proc = psutil.Process(server.pid)
    asyncio.run(_hammer(url, server.headers, 64, 256, 30))  # warm-up
    server.get("bench/requests?reset=1")
    me = psutil.Process()
    cpu0, mine0, wall0 = proc.cpu_times(), me.cpu_times(), time.monotonic()
    closed = asyncio.run(_hammer(url, server.headers, 64, total, 300))
    cpu1, mine1, wall1 = proc.cpu_times(), me.cpu_times(), time.monotonic()
    closed["server_side"] = server.get("bench/requests?reset=1").get("/tfgpu/api/gpus", {})
    # Which side is the bottleneck: both are single-threaded Python on a 2-core machine.
    closed["server_cpu_pct_of_one_core"] = busy_pct(cpu0, cpu1, wall1 - wall0)
    closed["client_cpu_pct_of_one_core"] = busy_pct(mine0, mine1, wall1 - wall0)
    if profile:  # a second run under py-spy: on 2 cores the profiler itself slows the server
        with PySpy(server.pid, profile / "d_closed_loop.txt") as spy:
            profiled = asyncio.run(_hammer(url, server.headers, 64, total, 300))
        closed["profile"] = {"throughput_rps_while_profiled": profiled["throughput_rps"], **spy.summary()}
        server.get("bench/requests?reset=1")
    cpu0, mine0, wall0 = proc.cpu_times(), me.cpu_times(), time.monotonic()
    keepalive = asyncio.run(_keepalive(server.port, "tfgpu/api/gpus", server.headers, 64, total, 300))
    cpu1, mine1, wall1 = proc.cpu_times(), me.cpu_times(), time.monotonic()
    keepalive["server_side"] = server.get("bench/requests?reset=1").get("/tfgpu/api/gpus", {})
    keepalive["server_cpu_pct_of_one_core"] = busy_pct(cpu0, cpu1, wall1 - wall0)
    keepalive["client_cpu_pct_of_one_core"] = busy_pct(mine0, mine1, wall1 - wall0)
    paced = asyncio.run(_paced(url, server.headers, 64, paced_seconds))
    paced["server_side"] = server.get("bench/requests?reset=1").get("/tfgpu/api/gpus", {})
    size = len(server.request("tfgpu/api/gpus")[1])
    return {
        "response_bytes": size,
        "closed_loop_64": closed,
        "closed_loop_64_keepalive": keepalive,
        "paced_64_at_1hz": paced,
    }


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


# -- report ----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """A small table of the headline numbers next to their targets."""
    lines = ["| # | measurement | result | target | met |", "|---|---|---|---|---|"]

    def row(key: str, what: str, value: str, met: bool | None = None) -> None:
        target = TARGETS[key] if met is not None else "(context)"
        verdict = "" if met is None else ("yes" if met else "NO")
        lines.append(f"| {key} | {what} | {value} | {target} | {verdict} |")

    s = result["sections"]
    if "a" in s:
        a = s["a"]
        rates = ", ".join(f"{n}: {r['calls_per_s']:.1f} ({r['wall_s']:.0f} s)" for n, r in a["by_clients"].items())
        row("a", f"NVML calls/s by clients ({rates})", f"spread {a['spread']:.1%}", a["flat_within_10pct"])
    if "b" in s:
        b = s["b"]
        off, on, first = b["without_pcie"], b["with_pcie"], b["with_pcie_first_seconds"]
        row("b", "NVML time / wall time, no PCIe", f"{off['nvml_fraction']:.2%}", off["nvml_fraction"] <= b["nvml_budget"])
        row(
            "b",
            f"NVML time / wall time, PCIe watched ({on['wall_s']:.0f} s)",
            f"{on['nvml_fraction']:.2%} (first {first['seconds']:.0f} s: {first['nvml_fraction']:.1%})",
            on["nvml_fraction"] <= b["nvml_budget"],
        )
    if "c" in s:
        c = s["c"]
        row("c", "GET /api/status p50 / p99, 50 streaming", f"{c['p50_ms']} / {c['p99_ms']} ms", c["p99_ms"] < 50)
    if "d" in s:
        d, k, p = (s["d"][n] for n in ("closed_loop_64", "closed_loop_64_keepalive", "paced_64_at_1hz"))
        row(
            "d",
            f"GET gpus p50 / p99, 64 concurrent back to back, AsyncHTTPClient ({d['throughput_rps']} req/s)",
            f"{d['p50_ms']} / {d['p99_ms']} ms",
            d["p99_ms"] < 20,
        )
        row(
            "d",
            f"GET gpus p50 / p99, 64 concurrent back to back, keep-alive ({k['throughput_rps']} req/s)",
            f"{k['p50_ms']} / {k['p99_ms']} ms",
        )
        row("d", "GET gpus p50 / p99, 64 clients at 1 Hz each", f"{p['p50_ms']} / {p['p99_ms']} ms")
    if "e" in s:
        for name, what, judged in (("clients_50", "50 clients", True), ("no_clients", "no clients", False)):
            e = s["e"][name]
            row(
                "e",
                f"server CPU, {what}, no latency (total / excl. NVML)",
                f"{e['cpu_pct_of_one_core']:.2f}% / {e['cpu_excluding_nvml_pct']:.2f}%",
                e["cpu_excluding_nvml_pct"] < 2 if judged else None,
            )
    return "\n".join(lines)


def main() -> int:
    """Run the chosen sections and print JSON, then markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    parser.add_argument("--sections", default="abcde", help="which sections to run, e.g. 'ab'")
    parser.add_argument("--window", type=float, default=None, help="section a window per client count (s, rounded to whole 5-s slow cycles)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="record py-spy stacks of the server into this dir (d, e)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    sections = set(args.sections.replace(",", ""))
    q = args.quick
    settle = 1.0 if q else 3.0
    result: dict[str, Any] = {"machine": machine(), "quick": q, "targets": TARGETS, "sections": {}}
    started = time.monotonic()
    if sections & set("acd"):
        with FakeServer() as server:
            if "a" in sections:
                cycles = max(1, round((args.window or (5 if q else 20)) / 5))
                result["sections"]["a"] = section_a(server, cycles, settle)
            if "c" in sections:
                result["sections"]["c"] = section_c(server, 150 if q else 1000, 0.02, 60, settle)
            if "d" in sections:
                result["sections"]["d"] = section_d(server, 640 if q else 12800, 5 if q else 20, args.profile)
    if "b" in sections:
        result["sections"]["b"] = section_b(10 if q else 60, 20 if q else 120, 10, settle)
    if "e" in sections:
        result["sections"]["e"] = section_e(15 if q else 60, 5 if q else 30, settle, args.profile)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

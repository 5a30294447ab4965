"""Sections c and d: jupyter_server's GET /api/status while clients stream, and GET
tfgpu/api/gpus under 64 concurrent clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from _harness import FakeServer, percentile
from _pyspy import PySpy
from _streams import StreamClients

from .counters import ms


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

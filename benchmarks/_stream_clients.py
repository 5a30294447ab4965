"""Helper process for the benchmarks: N websocket clients on tfgpu/api/stream.

Prints ``READY <connected>`` once every client is connected (and the PCIe watchers have asked
for PCIe), then counts messages until ``--seconds`` pass or SIGTERM arrives, and prints one JSON
line: {"clients", "seconds", "messages": {min, median, max}, "bytes"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def client(url: str, token: str, pcie: bool, counts: list, slot: int):
    """One websocket client: connect and optionally ask for PCIe."""
    request = HTTPRequest(
        url, headers={"Authorization": f"token {token}"}, connect_timeout=30, request_timeout=30
    )
    conn = await websocket_connect(request)
    if pcie:
        await conn.write_message(json.dumps({"pcie": True}))
    counts[slot] = [0, 0]
    return conn


async def reader(conn, stop: asyncio.Event, counts: list, slot: int) -> None:
    """Read messages until stopped or the server closes."""
    while not stop.is_set():
        message = await conn.read_message()
        if message is None:
            return
        counts[slot][0] += 1
        counts[slot][1] += len(message)


async def main() -> int:
    """Connect, report READY, count, report a summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--pcie", type=int, default=0, help="how many clients watch PCIe")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    counts: list = [None] * args.clients
    conns = await asyncio.wait_for(
        asyncio.gather(
            *(client(args.url, args.token, i < args.pcie, counts, i) for i in range(args.clients))
        ),
        timeout=60,
    )
    started = time.monotonic()
    print(f"READY {len(conns)}", flush=True)
    tasks = [asyncio.create_task(reader(c, stop, counts, i)) for i, c in enumerate(conns)]
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.seconds)
    except asyncio.TimeoutError:
        pass
    elapsed = time.monotonic() - started
    for task in tasks:
        task.cancel()
    for conn in conns:
        conn.close()
    messages = [c[0] for c in counts if c is not None]
    print(
        json.dumps(
            {
                "clients": len(conns),
                "seconds": round(elapsed, 3),
                "messages": {
                    "min": min(messages),
                    "median": statistics.median(messages),
                    "max": max(messages),
                },
                "bytes": sum(c[1] for c in counts if c is not None),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

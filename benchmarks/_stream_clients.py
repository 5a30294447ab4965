"""Helper process for the benchmarks: N websocket clients on tfgpu/api/stream.

Prints ``READY <connected>`` once every client is connected (and the PCIe watchers have asked
for PCIe), then counts messages until ``--seconds`` pass or SIGTERM arrives, and prints one JSON
line: {"clients", "seconds", "messages": {min, median, max}, "bytes"}. With ``--classify`` each
message is parsed and the line adds "per_client": [{"messages", "bytes", "same_snapshot",
"new_revision"}], where "same_snapshot" counts messages carrying the snapshot (``timestamp``) of
the message before (a push without a new sample: a policy change) and "new_revision" those whose
``policies.revision`` differs from the message before's.
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
    # messages, bytes, same snapshot as the message before, new revision, last (timestamp, revision)
    counts[slot] = [0, 0, 0, 0, None]
    return conn


async def reader(conn, stop: asyncio.Event, counts: list, slot: int, classify: bool) -> None:
    """Read messages until stopped or the server closes."""
    while not stop.is_set():
        message = await conn.read_message()
        if message is None:
            return
        count = counts[slot]
        count[0] += 1
        count[1] += len(message)
        if classify:
            data = json.loads(message)
            key = (data.get("timestamp"), (data.get("policies") or {}).get("revision"))
            if count[4] is not None:
                count[2] += key[0] == count[4][0]
                count[3] += key[1] != count[4][1]
            count[4] = key


async def main() -> int:
    """Connect, report READY, count, report a summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--pcie", type=int, default=0, help="how many clients watch PCIe")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--classify", action="store_true", help="count pushes and revisions")
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
    tasks = [
        asyncio.create_task(reader(c, stop, counts, i, args.classify)) for i, c in enumerate(conns)
    ]
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
    summary = {
        "clients": len(conns),
        "seconds": round(elapsed, 3),
        "messages": {
            "min": min(messages), "median": statistics.median(messages), "max": max(messages)
        },  # fmt: skip
        "bytes": sum(c[1] for c in counts if c is not None),
    }
    if args.classify:
        summary["per_client"] = [
            {"messages": c[0], "bytes": c[1], "same_snapshot": c[2], "new_revision": c[3]}
            for c in counts
            if c is not None
        ]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

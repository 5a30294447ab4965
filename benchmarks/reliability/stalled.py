"""Section 6: stream clients that never read, on servers of 8 and of 64 GPUs sampled fast."""

from __future__ import annotations

import time
from typing import Any

import psutil

from _harness import FakeServer, call
from _streams import StreamClients, stalled_stream_client
from jupyter_tfgpu.server.api.backpressure import STALL_SECONDS

from .plumbing import mib


def stream_clients(server: FakeServer) -> dict[str, Any]:
    """The stream's open clients and the bytes they hold on the server (launcher endpoint)."""
    status, body, _ = call(server, "GET", "bench/stream")
    if status != 200 or not body:
        return {"unavailable": str(status)}
    return {
        "clients": body["clients"],
        "pending_kib": round(body["pending_bytes"] / 1024, 1),
        "closed": sum(1 for o in body["outputs"] if o["closed_because"]),
    }


def stalled_round(gpus: int, p: dict[str, Any]) -> dict[str, Any]:
    """``p["stalled"]`` clients stop reading for ``stalled_s`` on a server of ``gpus`` GPUs sampled
    every 0.1 s; the server's RSS every few seconds and after they close; one client reads."""
    extra = [
        "--TFGPU.sample_interval=0.1", "--TFGPU.history_seconds=60",
        # Driver time is not what is measured here: let the fast group keep its 0.1 s.
        "--TFGPU.nvml_budget=1",
    ]  # fmt: skip
    with FakeServer(latency=False, launcher=["--gpus", str(gpus)], extra=extra) as server:
        proc = psutil.Process(server.pid)
        seconds = p["stalled_s"] + 2 * p["after_close_s"] + 60
        with StreamClients(server, 1, max_seconds=seconds) as reading:
            time.sleep(2)
            before = {"rss_mib": mib(proc.memory_info().rss), **stream_clients(server)}
            sockets = [stalled_stream_client(server) for _ in range(p["stalled"])]
            opened = time.monotonic()
            timeline = []
            try:
                for tick in range(int(p["stalled_s"] // p["rss_every_s"]) + 1):
                    wait = opened + tick * p["rss_every_s"] - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    timeline.append({
                        "s": round(time.monotonic() - opened, 1),
                        "rss_mib": mib(proc.memory_info().rss), **stream_clients(server),
                    })  # fmt: skip
            finally:
                for sock in sockets:
                    sock.close()
            closed = time.monotonic()
            after = []
            for wait_s in (p["after_close_s"] / 3, p["after_close_s"]):
                time.sleep(max(0.0, closed + wait_s - time.monotonic()))
                after.append({
                    "s_after_close": round(time.monotonic() - closed, 1),
                    "rss_mib": mib(proc.memory_info().rss), **stream_clients(server),
                })  # fmt: skip
        status = server.get("tfgpu/api/status")
    summary = reading.summary
    fast = ((status.get("sampler") or {}).get("groups") or {}).get("fast") or {}
    rss = [row["rss_mib"] for row in timeline]
    return {
        "gpus": gpus,
        "stalled_clients": p["stalled"],
        "fast_interval_s": fast.get("interval"),
        "configured_interval_s": fast.get("configured_interval"),
        "before": before,
        "every_5s": timeline,
        "after_close": after,
        "rss_growth_mib_peak": round(max(rss) - before["rss_mib"], 1) if rss else None,
        "rss_growth_mib_after_close": round(after[-1]["rss_mib"] - before["rss_mib"], 1),
        "reading_client": {
            "messages": summary.get("messages", {}).get("max"),
            "seconds": summary.get("seconds"),
            "per_s": round(summary["messages"]["max"] / summary["seconds"], 2)
            if summary.get("seconds") else None,
            "mib": mib(summary.get("bytes")),
        },
    }


def section_stalled(p: dict[str, Any]) -> dict[str, Any]:
    """Stalled websocket clients on servers of 8 and of 64 GPUs sampled every 0.1 s."""
    return {
        "stall_seconds": STALL_SECONDS,
        "rounds": [stalled_round(gpus, p) for gpus in p["stalled_gpus"]],
    }

"""The poller process (``bench_scale.py --poll``): reads the server at fixed rates and records
each answer; ``Poller`` starts it from the benchmark and reads its records back."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _harness import REPO, FakeServer, stop_process

# The poller process is bench_scale.py run with --poll (its hidden options).
BENCH_SCALE = Path(__file__).resolve().parent.parent / "bench_scale.py"
# Poller periods (seconds) per reading.
PERIODS = {"gpus": 0.2, "api_status": 0.2, "sampler": 0.5, "kernels": 1.0}
PATHS = {
    "gpus": "tfgpu/api/gpus",
    "api_status": "api/status",
    "sampler": "tfgpu/api/status",
    "kernels": "tfgpu/api/kernels",
}


class _Recorder:
    """JSON lines appended to one file by several threads; each line flushed at once."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _digest(kind: str, body: Any) -> dict[str, Any]:
    """The few figures kept of one answer."""
    if kind == "gpus":
        return {"ts": body.get("timestamp")}
    if kind == "sampler":
        sampler = body.get("sampler") or {}
        groups = sampler.get("groups") or {}
        fast, procs = groups.get("fast") or {}, groups.get("processes") or {}
        return {
            "fast": fast.get("interval"), "fast_cfg": fast.get("configured_interval"),
            "fast_cost": fast.get("cost_ms"), "proc": procs.get("interval"),
            "proc_cost": procs.get("cost_ms"), "proc_calls": procs.get("calls"),
            "rounds": sampler.get("rounds"), "fraction": sampler.get("backend_time_fraction"),
        }  # fmt: skip
    if kind == "kernels":
        rows = body.get("kernels") or []
        held = [r["id"] for r in rows if ((r.get("gpu_memory") or {}).get("total") or 0) > 0]
        return {"n": len(rows), "held": held}
    return {}


def _poll_path(kind: str, port: int, headers: dict, out: _Recorder, stop: threading.Event) -> None:
    """GET one path at a fixed rate on a keep-alive connection (no backlog when it is slow)."""
    period, path = PERIODS[kind], "/" + PATHS[kind]
    conn: http.client.HTTPConnection | None = None
    next_at = time.monotonic()
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        record: dict[str, Any] = {"k": kind}
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            record["st"] = response.status
            if response.status == 200 and kind != "api_status":
                record.update(_digest(kind, json.loads(raw)))
        except (OSError, http.client.HTTPException, ValueError) as err:
            record["st"] = type(err).__name__
            conn.close()
            conn = None
        record["lat"] = time.perf_counter() - started
        record["t"] = time.time()
        out.write(record)
        next_at += period
        now = time.monotonic()
        if next_at < now:  # a slow answer: skip the missed slots rather than burst
            next_at = now
        stop.wait(next_at - now)
    if conn is not None:
        conn.close()


def _observe_stream(ws_url: str, headers: dict, out: _Recorder, stop: threading.Event) -> None:
    """One websocket client on the stream: arrival time, size and snapshot time of each message."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    async def observe() -> None:
        request = HTTPRequest(ws_url, headers=headers, connect_timeout=30, request_timeout=30)
        conn = await websocket_connect(request)
        try:
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(conn.read_message(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if message is None:
                    out.write({"k": "ws", "t": time.time(), "closed": True})
                    return
                record: dict[str, Any] = {"k": "ws", "t": time.time(), "bytes": len(message)}
                try:
                    body = json.loads(message)
                    record["ts"] = body.get("timestamp")
                    record["kernels"] = len(body.get("kernels") or [])
                except ValueError:
                    pass
                out.write(record)
        finally:
            conn.close()

    try:
        asyncio.run(observe())
    except Exception as err:  # noqa: BLE001 - recorded, the other readings go on
        out.write({"k": "ws", "t": time.time(), "error": f"{type(err).__name__}: {err}"})


def poll_main(args: argparse.Namespace) -> int:
    """The poller process: read the server at fixed rates until SIGTERM or ``--seconds``."""
    headers = {"Authorization": f"token {args.token}"}
    out = _Recorder(args.poll)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(target=_poll_path, args=(kind, args.port, headers, out, stop), daemon=True)
        for kind in PERIODS
    ]
    if args.observe:
        ws_url = f"ws://127.0.0.1:{args.port}/tfgpu/api/stream"
        threads.append(
            threading.Thread(target=_observe_stream, args=(ws_url, headers, out, stop), daemon=True)
        )
    for thread in threads:
        thread.start()
    print("READY", flush=True)
    stop.wait(args.seconds)
    stop.set()
    for thread in threads:
        thread.join(35)
    out.close()
    return 0


class Poller:
    """The poller process, started and stopped from here; its records read back as they come."""

    def __init__(self, server: FakeServer, path: Path, observe: bool, max_seconds: float) -> None:
        self.server, self.path, self.observe, self.max_seconds = server, path, observe, max_seconds
        self.proc: subprocess.Popen | None = None
        self._offset = 0
        self.records: list[dict[str, Any]] = []

    def __enter__(self) -> "Poller":
        cmd = [
            sys.executable, str(BENCH_SCALE), "--poll", str(self.path),
            "--port", str(self.server.port), "--token", self.server.token,
            "--seconds", str(self.max_seconds),
        ]  # fmt: skip
        if self.observe:
            cmd.append("--observe")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # bounded: the helper prints at once
        if line != "READY":
            stop_process(self.proc)
            raise RuntimeError(f"poller did not start: {line!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=40)
            self.proc = None
        self.read()

    def read(self) -> list[dict[str, Any]]:
        """Records written since the last call (complete lines only); all are kept."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        new = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
        self.records.extend(new)
        return new

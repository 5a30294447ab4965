"""Scale: a start storm of real kernels on 8 GPUs x 7 MIG slices with 200 foreign GPU processes.

One server (``serve_fake.py --mig 7 --foreign-processes 200``: 8 H100s, each split into seven
1g.10gb slices, with the spec's per-call NVML latencies) and 50 websocket clients on the stream.
After a baseline, 30 real ipykernels are started at once through ``POST api/sessions``; as soon as
a kernel's PID is known it is listed in the fake as a GPU process on a MIG slice holding 2 GiB
(``bench/processes``), and the kernel runs one cell (which prints the bootstrap folder it
loaded). The storm ends when every kernel has answered. Then the script waits (bounded) until
the sampler's fast group is back at its configured interval and every kernel shows GPU memory,
and measures a window after that.

Measured from other processes than the server's: a poller process (GET ``tfgpu/api/gpus`` and
jupyter_server's ``/api/status`` every 200 ms, ``tfgpu/api/status`` every 500 ms,
``tfgpu/api/kernels`` every second, and one websocket client that logs every message), the
websocket clients' process, and this one (kernels, counters, server CPU through psutil).

Reports: time from the storm's end until the fast interval is back at the configured one (and
the largest fast and process-list intervals seen), staleness of ``GET gpus`` (now - snapshot
``timestamp``) during the storm and 30 s after, time until all kernels show GPU memory in
``GET kernels``, driver time per second and server CPU per phase, stream message size, and
p50/p99 of ``GET gpus`` and ``/api/status`` during the storm. Prints JSON, then a markdown table;
no figure is enforced.

    python benchmarks/bench_scale.py                       # the full set-up, 2-4 minutes
    python benchmarks/bench_scale.py --quick               # 2 GPUs x 2 slices, 4 kernels, 5 clients
    python benchmarks/bench_scale.py --kernels 10 --clients 10 --gpus 4 --mig 3 --foreign 50
    python benchmarks/bench_scale.py --checkout ../other   # the server runs that checkout's package
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    FakeServer,
    call,
    execute,
    machine,
    percentile,
    start_session,
    stop_process,
)
from _streams import StreamClients  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GIB = 2**30
FULL = {
    "gpus": 8, "mig": 7, "foreign": 200, "kernels": 30, "clients": 50,
    "baseline_s": 10.0, "recovery_max_s": 120.0, "stable_s": 5.0, "after_s": 30.0,
}  # fmt: skip
QUICK = {
    "gpus": 2, "mig": 2, "foreign": 20, "kernels": 4, "clients": 5,
    "baseline_s": 4.0, "recovery_max_s": 20.0, "stable_s": 3.0, "after_s": 6.0,
}  # fmt: skip
KERNEL_BYTES = 2 * GIB  # what each kernel's GPU process holds on its slice
STALE_AFTER_STORM_S = 30.0  # staleness is judged over the storm and this long after it
# Poller periods (seconds) per reading.
PERIODS = {"gpus": 0.2, "api_status": 0.2, "sampler": 0.5, "kernels": 1.0}
PATHS = {
    "gpus": "tfgpu/api/gpus",
    "api_status": "api/status",
    "sampler": "tfgpu/api/status",
    "kernels": "tfgpu/api/kernels",
}
TARGETS = {"recovery_s": 10.0, "max_age_s": 5.0, "driver_share": 0.02}


# -- the poller process --------------------------------------------------------------------------


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
            sys.executable, str(Path(__file__).resolve()), "--poll", str(self.path),
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


# -- the storm -----------------------------------------------------------------------------------


def _checkout_state(package: str | None) -> dict[str, Any]:
    """Commit of the checkout the server imported, whether its package differs from that
    commit, and a digest of its sampler (to tell whether it changed during the run)."""
    if not package:
        return {}
    root = Path(package).parent
    sampling = Path(package) / "server" / "sampling"
    digest = hashlib.sha256()
    for source in sorted(sampling.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", Path(package).name)
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "package_changed_from_commit": None if changed is None else bool(changed),
        "sampler_digest": digest.hexdigest()[:16],
    }


def _counters(server: FakeServer) -> dict[str, Any]:
    """Wall clock, the fake's driver time and the server's CPU seconds, read together."""
    nvml = server.nvml()
    cpu = psutil.Process(server.pid).cpu_times()
    host = psutil.cpu_times()
    idle = host.idle + getattr(host, "iowait", 0.0)
    # This run: this process and its descendants (server, kernels, poller, stream clients).
    run_cpu = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            run_cpu += times.user + times.system
        except psutil.Error:
            continue
    return {
        "t": time.time(), "call_time": nvml["call_time"], "cpu": cpu.user + cpu.system,
        "host_busy": sum(host) - idle, "host_total": sum(host), "run_cpu": run_cpu,
    }  # fmt: skip


def _start_kernel(server: FakeServer, i: int, p: dict[str, Any], t0: float) -> dict[str, Any]:
    """One kernel of the storm: session, PID, GPU process on a slice, first execution."""
    rec: dict[str, Any] = {"i": i}
    try:
        session = start_session(server, f"scale-{i:03d}.ipynb", timeout=180)
        rec["session_id"], rec["kernel_id"] = session["id"], session["kernel"]["id"]
        rec["session_s"] = round(time.time() - t0, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not rec.get("pid"):
            status, row, _ = call(server, "GET", f"tfgpu/api/kernels/{rec['kernel_id']}")
            rec["pid"] = (row or {}).get("pid") if status == 200 else None
            if not rec["pid"]:
                time.sleep(0.2)
        if not rec.get("pid"):
            raise RuntimeError("the kernel's PID never showed in GET kernels/{id}")
        rec["created"] = psutil.Process(rec["pid"]).create_time()  # to end only this process
        gpu = i % p["gpus"]
        slot = (i // p["gpus"]) % p["mig"] if p["mig"] else None
        spec = {"pid": rec["pid"], "gpu": gpu, "mig": slot, "used_memory": KERNEL_BYTES}
        status, _, _ = call(server, "POST", "bench/processes", {"add": [spec]})
        if status != 200:
            raise RuntimeError(f"POST bench/processes: {status}")
        rec["added_at"] = time.time()
        rec["gpu"], rec["mig"] = gpu, slot
        # Which kernel bootstrap the kernel runs: that of the checkout the server imported.
        code = "import sys; print(getattr(sys.modules.get('tfgpu_bootstrap'), '__file__', None))"
        rec["bootstrap"] = execute(server, rec["kernel_id"], code, timeout=180).strip()
        rec["ready_at"] = time.time()
    except Exception as err:  # noqa: BLE001 - counted; the storm goes on
        rec["error"] = f"{type(err).__name__}: {err}"
    return rec


def _stop_kernels(server: FakeServer, kernels: list[dict[str, Any]]) -> dict[str, Any]:
    """Delete every session of the storm, 10 at a time, each bounded."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(
            lambda k: call(server, "DELETE", f"api/sessions/{k['session_id']}", timeout=60)[0],
            [k for k in kernels if k.get("session_id")],
        ))  # fmt: skip
    return {
        "deleted": sum(1 for c in codes if c == 204),
        "answers": {str(c): codes.count(c) for c in set(codes)},
        "seconds": round(time.monotonic() - started, 1),
    }


def _kill_leftovers(kernels: list[dict[str, Any]]) -> int:
    """SIGKILL the kernel processes of this run still alive after the server stopped."""
    killed = 0
    for k in kernels:
        if not k.get("created"):
            continue
        try:
            proc = psutil.Process(k["pid"])
            if abs(proc.create_time() - k["created"]) < 0.01:
                proc.kill()
                killed += 1
        except psutil.Error:
            continue
    return killed


def run(p: dict[str, Any], checkout: str | None, workdir: Path) -> dict[str, Any]:
    """Baseline, storm, recovery and an after-window against one server; the raw timeline."""
    launcher = [
        "--gpus", str(p["gpus"]), "--mig", str(p["mig"]), "--foreign-processes", str(p["foreign"]),
    ]  # fmt: skip
    if checkout:
        launcher += ["--checkout", checkout]
    out: dict[str, Any] = {"marks": {}, "counters": {}}
    kernels: list[dict[str, Any]] = []
    with FakeServer(launcher=launcher, max_seconds=1200) as server:
        out["package"] = server.info.get("package")
        out["checkout_at_start"] = _checkout_state(out["package"])
        # The baseline starts once the first process-list round has listed the foreign processes.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            groups = server.get("tfgpu/api/status")["sampler"]["groups"]
            if groups["processes"]["calls"] >= 1:
                break
            time.sleep(0.5)
        observer = p["clients"] >= 1
        helper_clients = max(0, p["clients"] - 1)
        max_run = p["baseline_s"] + 400 + p["recovery_max_s"] + p["after_s"]
        streams = (
            StreamClients(server, helper_clients, max_seconds=max_run) if helper_clients else None
        )
        poller = Poller(server, workdir / "poll.jsonl", observe=observer, max_seconds=max_run)
        if streams is not None:
            streams.__enter__()
        try:
            with poller:
                out["marks"]["baseline"] = time.time()
                out["counters"]["baseline"] = _counters(server)
                time.sleep(p["baseline_s"])
                out["rss_before_mib"] = round(
                    psutil.Process(server.pid).memory_info().rss / 2**20, 1
                )
                out["available_memory_before_gib"] = round(
                    psutil.virtual_memory().available / GIB, 2
                )
                t0 = time.time()
                out["marks"]["storm_start"] = t0
                out["counters"]["storm_start"] = _counters(server)
                with ThreadPoolExecutor(max_workers=p["kernels"]) as pool:
                    futures = [
                        pool.submit(_start_kernel, server, i, p, t0) for i in range(p["kernels"])
                    ]
                    low_memory = psutil.virtual_memory().available
                    # Counters every half second: the storm's end is known only afterwards.
                    series = []
                    while not all(f.done() for f in futures):
                        low_memory = min(low_memory, psutil.virtual_memory().available)
                        series.append(_counters(server))
                        time.sleep(0.5)
                    series.append(_counters(server))
                    kernels = [f.result() for f in futures]
                out["available_memory_min_gib"] = round(low_memory / GIB, 2)
                ready = [k["ready_at"] for k in kernels if "ready_at" in k]
                storm_end = max(ready) if ready else time.time()
                out["marks"]["storm_end"] = storm_end
                out["counters"]["storm_end"] = next(c for c in series if c["t"] >= storm_end)
                out["rss_storm_end_mib"] = round(
                    psutil.Process(server.pid).memory_info().rss / 2**20, 1
                )
                ids = {k["kernel_id"] for k in kernels if "ready_at" in k}
                settled = _wait_settled(poller, p, storm_end, ids)
                out["settle_reason"] = settled
                out["marks"]["settled"] = time.time()
                out["counters"]["settled"] = _counters(server)
                time.sleep(p["after_s"])
                out["marks"]["end"] = time.time()
                out["counters"]["end"] = _counters(server)
                out["rss_end_mib"] = round(psutil.Process(server.pid).memory_info().rss / 2**20, 1)
                out["sampler_at_end"] = server.get("tfgpu/api/status")["sampler"]
        finally:
            if streams is not None:
                streams.__exit__(None, None, None)
                out["stream_clients"] = streams.summary
            out["stop"] = _stop_kernels(server, kernels)
        out["records"] = poller.records
        out["checkout_at_end"] = _checkout_state(out["package"])
    out["leftover_kernels_killed"] = _kill_leftovers(kernels)
    out["kernels"] = kernels
    return out


def _wait_settled(poller: Poller, p: dict[str, Any], storm_end: float, ids: set[str]) -> str:
    """Wait until the fast interval has stayed at its configured value for ``stable_s`` after the
    storm and every kernel shows GPU memory, or ``recovery_max_s`` passed; the reason."""
    deadline = storm_end + p["recovery_max_s"]
    last_stretched = storm_end
    attributed = False
    while time.time() < deadline:
        for rec in poller.read():
            if rec["k"] == "sampler" and rec.get("fast") is not None:
                if rec["fast"] > rec["fast_cfg"] * 1.01:
                    last_stretched = max(last_stretched, rec["t"])
            elif rec["k"] == "kernels" and "held" in rec:
                attributed = attributed or ids <= set(rec["held"])
        if attributed and time.time() - last_stretched >= p["stable_s"]:
            return "recovered and attributed"
        time.sleep(0.5)
    return f"waited the maximum ({p['recovery_max_s']:g} s after the storm)"


# -- figures -------------------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max in milliseconds of latencies in seconds."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 2)

    return {
        "n": len(values), "p50_ms": r(percentile(values, 50)), "p99_ms": r(percentile(values, 99)),
        "max_ms": r(max(values)) if values else None,
    }  # fmt: skip


def _rate(counters: dict[str, Any], a: str, b: str) -> dict[str, float | None]:
    """Driver ms per second and server CPU (% of one core) between two marks."""
    if a not in counters or b not in counters:
        return {}
    x, y = counters[a], counters[b]
    wall = max(y["t"] - x["t"], 1e-9)
    host_total = max(y["host_total"] - x["host_total"], 1e-9)
    return {
        "seconds": round(wall, 1),
        "driver_ms_per_s": round(1000 * (y["call_time"] - x["call_time"]) / wall, 2),
        "server_cpu_pct": round(100 * (y["cpu"] - x["cpu"]) / wall, 1),
        # Every process on the host (kernels, clients, anything else): % of all cores.
        "host_busy_pct": round(100 * (y["host_busy"] - x["host_busy"]) / host_total, 1),
        # What processes outside this run took: host busy less this run's own CPU time.
        "others_pct": round(
            100 * ((y["host_busy"] - x["host_busy"]) - (y["run_cpu"] - x["run_cpu"])) / host_total,
            1,
        ),
    }


def figures(raw: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """The reported figures from the raw timeline."""
    marks, records = raw["marks"], raw["records"]
    t0, storm_end, end = marks["storm_start"], marks["storm_end"], marks["end"]
    stale_end = storm_end + STALE_AFTER_STORM_S

    def of(kind: str, a: float, b: float) -> list[dict[str, Any]]:
        return [r for r in records if r["k"] == kind and a <= r["t"] <= b]

    # Fast cadence and its recovery.
    sampler = [r for r in records if r["k"] == "sampler" and r.get("fast") is not None]
    cfg = sampler[0]["fast_cfg"] if sampler else None
    after_start = [r for r in sampler if r["t"] >= t0]
    stretched = [r for r in after_start if r["fast"] > r["fast_cfg"] * 1.01]
    recovery_s: float | None = 0.0
    if stretched:
        last = stretched[-1]["t"]
        later = [r for r in after_start if r["t"] > last]
        recovery_s = round(max(0.0, later[0]["t"] - storm_end), 1) if later else None
    fast_at_storm_end = next((r["fast"] for r in reversed(sampler) if r["t"] <= storm_end), None)
    baseline = [r for r in sampler if r["t"] < t0]
    # Snapshot age seen by GET gpus; and the real gaps between snapshots (stream messages).
    gpus_window = [r for r in of("gpus", t0, stale_end) if r.get("ts")]
    ages = [r["t"] - r["ts"] for r in gpus_window]
    gpus_run = [r for r in of("gpus", t0, end) if r.get("ts")]
    oldest = max(gpus_run, key=lambda r: r["t"] - r["ts"], default=None)
    # Snapshots taken from the storm's start to the end (distinct timestamps): the real cadence.
    taken = sorted(
        {r["ts"] for r in gpus_run}
        | {r["ts"] for r in records if r["k"] == "ws" and r.get("ts") and r["t"] >= t0}
    )
    taken_gaps = [(b - a, b) for a, b in zip(taken, taken[1:])]
    longest = max(taken_gaps, default=None)
    ws = [r for r in records if r["k"] == "ws" and "bytes" in r]
    ws_storm = [r for r in ws if t0 <= r["t"] <= stale_end]
    gaps = [b["t"] - a["t"] for a, b in zip(ws_storm, ws_storm[1:])]
    long_gaps_after = [
        b["t"]
        for a, b in zip(ws, ws[1:])
        if b["t"] > storm_end and b["t"] - a["t"] > 1.5 * (cfg or 1)
    ]
    # Attribution: the first kernels reading in which every ready kernel holds memory.
    ready = [k for k in raw["kernels"] if "ready_at" in k]
    ids = {k["kernel_id"] for k in ready}
    all_held = next(
        (r["t"] for r in of("kernels", t0, end) if ids and ids <= set(r.get("held") or [])), None
    )
    last_added = max((k["added_at"] for k in ready), default=None)
    first_held: dict[str, float] = {}
    for r in of("kernels", t0, end):
        for kid in r.get("held") or []:
            first_held.setdefault(kid, r["t"])
    waits = [
        first_held[k["kernel_id"]] - k["added_at"] for k in ready if k["kernel_id"] in first_held
    ]
    sizes = [r["bytes"] for r in ws if r["t"] >= t0]
    counters = raw["counters"]
    nvml_windows = {
        "baseline": _rate(counters, "baseline", "storm_start"),
        "storm": _rate(counters, "storm_start", "storm_end"),
        "recovery": _rate(counters, "storm_end", "settled"),
        "after": _rate(counters, "settled", "end"),
        "storm_to_end": _rate(counters, "storm_start", "end"),
    }
    return {
        "kernels": {
            "started": len(raw["kernels"]),
            "ready": len(ready),
            "errors": [k["error"] for k in raw["kernels"] if "error" in k][:5],
            "storm_s": round(storm_end - t0, 1),
            "session_s_max": max((k.get("session_s", 0) for k in ready), default=None),
            "bootstrap_folders": sorted({str(Path(k["bootstrap"]).parent) for k in ready}),
        },  # fmt: skip
        "fast_cadence": {
            "configured_s": cfg,
            "baseline_interval_s": max((r["fast"] for r in baseline), default=None),
            "interval_at_storm_end_s": fast_at_storm_end,
            "max_interval_s": max((r["fast"] for r in after_start), default=None),
            "max_cost_ms": max((r["fast_cost"] for r in after_start), default=None),
            "baseline_cost_ms": max((r["fast_cost"] for r in baseline), default=None),
            "recovery_s": recovery_s,
            "recovered": recovery_s is not None,
            "waited_s": round(marks["settled"] - storm_end, 1),
            "max_gap_between_messages_s": round(max(gaps), 2) if gaps else None,
            "last_long_gap_after_storm_end_s": (
                round(long_gaps_after[-1] - storm_end, 1) if long_gaps_after else 0.0
            ),
        },
        "processes_cadence": {
            "configured_s": raw["sampler_at_end"]["groups"]["processes"]["configured_interval"],
            "baseline_interval_s": max((r["proc"] for r in baseline), default=None),
            "max_interval_s": max((r["proc"] for r in after_start), default=None),
            "interval_at_end_s": raw["sampler_at_end"]["groups"]["processes"]["interval"],
            "cost_ms_at_end": raw["sampler_at_end"]["groups"]["processes"]["cost_ms"],
            "rounds_storm_to_end": (
                (after_start[-1]["proc_calls"] - after_start[0]["proc_calls"])
                if after_start
                else None
            ),
            "first_round_after_storm_start_s": next(
                (
                    round(r["t"] - t0, 1)
                    for r in after_start
                    if r["proc_calls"] > after_start[0]["proc_calls"]
                ),
                None,
            ),
        },
        "staleness": {
            "window": f"storm start to {STALE_AFTER_STORM_S:g} s after its end",
            "polls": len(ages),
            "max_s": round(max(ages), 2) if ages else None,
            "p99_s": round(percentile(ages, 99), 2) if ages else None,
            "p50_s": round(percentile(ages, 50), 2) if ages else None,
            "errors": sum(1 for r in of("gpus", t0, stale_end) if r["st"] != 200),
            "whole_run": {
                "window": "storm start to the end of the run",
                "polls": len(gpus_run),
                "max_s": round(oldest["t"] - oldest["ts"], 2) if oldest else None,
                "max_at_after_storm_end_s": round(oldest["t"] - storm_end, 1) if oldest else None,
                "p99_s": (
                    round(percentile([r["t"] - r["ts"] for r in gpus_run], 99), 2)
                    if gpus_run
                    else None
                ),
            },
            "snapshots_taken": len(taken),
            "longest_gap_between_snapshots_s": round(longest[0], 2) if longest else None,
            "longest_gap_ended_after_storm_end_s": (
                round(longest[1] - storm_end, 1) if longest else None
            ),
        },
        "attribution": {
            "all_held_after_storm_end_s": None
            if all_held is None
            else round(all_held - storm_end, 1),
            "all_held_after_last_added_s": (
                None if all_held is None or last_added is None else round(all_held - last_added, 1)
            ),
            "all_held_after_storm_start_s": None if all_held is None else round(all_held - t0, 1),
            "per_kernel_wait_s": {
                "p50": round(percentile(waits, 50), 1) if waits else None,
                "max": round(max(waits), 1) if waits else None,
                "held": len(waits),
            },
        },
        "driver": {
            **nvml_windows,
            "budget": raw["sampler_at_end"]["nvml_budget"],
            "sampler_backend_time_fraction_at_end": raw["sampler_at_end"]["backend_time_fraction"],
        },
        "latency": {
            "gpus_storm": _ms([r["lat"] for r in of("gpus", t0, storm_end) if r["st"] == 200]),
            "api_status_storm": _ms(
                [r["lat"] for r in of("api_status", t0, storm_end) if r["st"] == 200]
            ),
            "gpus_after": _ms(
                [r["lat"] for r in of("gpus", marks["settled"], end) if r["st"] == 200]
            ),
            "api_status_after": _ms(
                [r["lat"] for r in of("api_status", marks["settled"], end) if r["st"] == 200]
            ),
            "kernels_storm": _ms(
                [r["lat"] for r in of("kernels", t0, storm_end) if r["st"] == 200]
            ),
            "errors_storm": sum(
                1 for k in ("gpus", "api_status") for r in of(k, t0, storm_end) if r["st"] != 200
            ),
        },
        "stream": {
            "clients": p["clients"],
            "message_bytes_median": percentile(sizes, 50),
            "message_bytes_max": max(sizes) if sizes else None,
            "messages_observed": len(ws_storm),
            "other_clients": raw.get("stream_clients"),
        },
        "server": {
            "rss_mib_before_storm_end_end": [
                raw.get("rss_before_mib"),
                raw.get("rss_storm_end_mib"),
                raw.get("rss_end_mib"),
            ],
            "available_memory_gib_before_min": [
                raw.get("available_memory_before_gib"),
                raw.get("available_memory_min_gib"),
            ],
        },  # fmt: skip
    }


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def markdown(result: dict[str, Any]) -> str:
    """The headline figures as a markdown table: measurement, result, target, met."""
    f = result["figures"]
    fc, pc, st, at = f["fast_cadence"], f["processes_cadence"], f["staleness"], f["attribution"]
    dr, lat, sv = f["driver"], f["latency"], f["stream"]
    budget_ms = 1000 * dr["budget"]
    storm, after, whole = dr["storm"], dr["after"], dr["storm_to_end"]
    rec = fc["recovery_s"]
    rec_text = f"{rec} s" if rec is not None else f"not back within {fc['waited_s']} s"
    held_text = (
        f"{at['all_held_after_storm_end_s']} / {at['all_held_after_last_added_s']} s"
        if at["all_held_after_storm_end_s"] is not None
        else f"not within {fc['waited_s'] + dr['after'].get('seconds', 0):g} s "
        f"({at['per_kernel_wait_s']['held']} of {f['kernels']['ready']} did)"
    )
    share = {k: dr[k].get("driver_ms_per_s") for k in ("storm", "after", "storm_to_end")}
    rows = [
        ("kernels started together / ready; storm (first POST to last kernel ready)",
         f"{f['kernels']['started']} / {f['kernels']['ready']}; {f['kernels']['storm_s']} s", "", ""),
        ("fast interval back at the configured "
         f"{fc['configured_s']} s, after the storm's end", rec_text,
         f"<= {TARGETS['recovery_s']:g} s", _met(rec is not None and rec <= TARGETS["recovery_s"])),
        ("fast interval: at the storm's end / largest seen (baseline)",
         f"{fc['interval_at_storm_end_s']} / {fc['max_interval_s']} s ({fc['baseline_interval_s']} s)", "", ""),
        ("fast group measured cost: largest seen (baseline)",
         f"{fc['max_cost_ms']} ms ({fc['baseline_cost_ms']} ms)", "", ""),
        ("stream messages: the last gap longer than 1.5x the configured interval ended, after the "
         "storm's end", f"{fc['last_long_gap_after_storm_end_s']} s", "", ""),
        ("process-list interval: baseline / largest seen / at the end",
         f"{pc['baseline_interval_s']} / {pc['max_interval_s']} / {pc['interval_at_end_s']} s", "", ""),
        (f"`GET gpus` snapshot age, storm + 30 s ({st['polls']} polls, 200 ms apart): max / p99",
         f"{st['max_s']} / {st['p99_s']} s", f"max <= {TARGETS['max_age_s']:g} s",
         _met(st["max_s"] is not None and st["max_s"] <= TARGETS["max_age_s"])),
        (f"same, storm start to the end of the run ({st['whole_run']['polls']} polls): max "
         "(when, after the storm's end) / p99",
         f"{st['whole_run']['max_s']} s ({st['whole_run']['max_at_after_storm_end_s']} s) / "
         f"{st['whole_run']['p99_s']} s", f"max <= {TARGETS['max_age_s']:g} s",
         _met(st["whole_run"]["max_s"] is not None
              and st["whole_run"]["max_s"] <= TARGETS["max_age_s"])),
        ("longest time without a new snapshot, storm start to end (it ended how long after the "
         "storm's end)",
         f"{st['longest_gap_between_snapshots_s']} s ({st['longest_gap_ended_after_storm_end_s']} s)",
         "", ""),
        ("all kernels show GPU memory in `GET kernels`: after the storm's end / after the last was listed",
         held_text, "", ""),
        ("first process-list round after the storm's start",
         f"{pc['first_round_after_storm_start_s']} s" if pc["first_round_after_storm_start_s"]
         is not None else "none", "", ""),
        ("driver time: storm / after recovery / storm start to end",
         " / ".join(f"{v} ms/s ({v / 10:.2f}%)" if v is not None else "-" for v in share.values()),
         f"<= {budget_ms:g} ms/s ({100 * dr['budget']:g}%)",
         _met(whole.get("driver_ms_per_s") is not None and whole["driver_ms_per_s"] <= budget_ms
              and after.get("driver_ms_per_s", 0) <= budget_ms)),
        ("server process CPU: baseline / storm / after recovery (% of one core)",
         f"{dr['baseline'].get('server_cpu_pct')} / {storm.get('server_cpu_pct')} / "
         f"{after.get('server_cpu_pct')}%", "", ""),
        ("whole host busy: baseline / storm / after recovery (% of all cores); of it, "
         "processes outside this run",
         f"{dr['baseline'].get('host_busy_pct')} / {storm.get('host_busy_pct')} / "
         f"{after.get('host_busy_pct')}%; {dr['baseline'].get('others_pct')} / "
         f"{storm.get('others_pct')} / {after.get('others_pct')}%", "", ""),
        (f"stream message with {sv['clients']} clients: median / max",
         f"{sv['message_bytes_median']} / {sv['message_bytes_max']} bytes", "", ""),
        ("`GET tfgpu/api/gpus` during the storm: p50 / p99",
         f"{lat['gpus_storm']['p50_ms']} / {lat['gpus_storm']['p99_ms']} ms", "p99 < 20 ms",
         _met(lat["gpus_storm"]["p99_ms"] is not None and lat["gpus_storm"]["p99_ms"] < 20)),
        ("jupyter_server `GET /api/status` during the storm: p50 / p99",
         f"{lat['api_status_storm']['p50_ms']} / {lat['api_status_storm']['p99_ms']} ms",
         "p99 < 50 ms",
         _met(lat["api_status_storm"]["p99_ms"] is not None and lat["api_status_storm"]["p99_ms"] < 50)),
        ("after recovery: `GET gpus` / `/api/status` p99",
         f"{lat['gpus_after']['p99_ms']} / {lat['api_status_after']['p99_ms']} ms", "", ""),
    ]  # fmt: skip
    lines = ["| measurement | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> int:
    """Run the storm once; print the JSON document and a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down smoke run")
    for name in ("kernels", "clients", "gpus", "mig", "foreign"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"override: {name}")
    parser.add_argument(
        "--recovery-max", type=float, default=None, help="seconds to wait after the storm"
    )
    parser.add_argument("--after", type=float, default=None, help="seconds measured after recovery")
    parser.add_argument(
        "--checkout", default="",
        help="the server imports jupyter_tfgpu from this checkout (e.g. a git worktree of an "
        "earlier commit); default: the installed package",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result here")
    parser.add_argument("--raw", action="store_true", help="keep every poller record in the JSON")
    # The poller helper process (started by this script).
    parser.add_argument("--poll", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--observe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll:
        return poll_main(args)

    p = dict(QUICK if args.quick else FULL)
    for name in ("kernels", "clients", "gpus", "mig", "foreign"):
        if getattr(args, name) is not None:
            p[name] = max(0, getattr(args, name))
    p["kernels"], p["gpus"] = max(1, min(p["kernels"], 200)), max(1, p["gpus"])
    p["clients"] = min(p["clients"], 500)
    if args.recovery_max is not None:
        p["recovery_max_s"] = max(1.0, min(args.recovery_max, 600.0))
    if args.after is not None:
        p["after_s"] = max(1.0, min(args.after, 300.0))
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "params": p,
        "checkout": args.checkout or None,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tfgpu-bench-scale-") as workdir:
        try:
            raw = run(p, args.checkout or None, Path(workdir))
            result["package"] = raw["package"]
            result["checkout_at_start"] = raw["checkout_at_start"]
            result["checkout_at_end"] = raw["checkout_at_end"]
            start_digest = raw["checkout_at_start"].get("sampler_digest")
            result["sampler_changed_during_run"] = start_digest != raw["checkout_at_end"].get(
                "sampler_digest"
            )
            result["settle"] = raw["settle_reason"]
            result["stop"] = raw["stop"]
            result["leftover_kernels_killed"] = raw["leftover_kernels_killed"]
            result["sampler_at_end"] = raw["sampler_at_end"]
            result["figures"] = figures(raw, p)
            if args.raw:
                result["raw"] = {k: raw[k] for k in ("marks", "counters", "kernels", "records")}
        except Exception:  # noqa: BLE001 - reported in the JSON, not raised
            result["error"] = traceback.format_exc()[-4000:]
    result["total_s"] = round(time.monotonic() - started, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    if "figures" in result:
        print()
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

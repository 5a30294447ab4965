"""What the hardening holds, measured against serve_fake.py (a real server, fake NVML of 8 GPUs).

Sections (``--sections 1234567``; all by default), each on a fresh server:
  1  a hostile kernel floods ``kernel/report`` (4 threads: distinct PIDs, long UUIDs, 60 MB
     bodies, a 401-digit figure) while a well-behaved client polls status, gpus, kernels and
     /metrics: its answers and latency, the kernel's answers, server RSS before/after/+35 s
  2  NVML faults mid-run (Timeout, Unknown, a hanging call) while the client polls status, gpus
     and /metrics: answers, rows carrying ``errors``, faults raised, fields back after clearing
  3  another process holds the policy store's ``flock``: reads while held, a PUT while held
     (503 after the store's lock timeout) and after release
  4  kernel churn: 50 kernels started and stopped through the REST API in batches of 10:
     server RSS and threads before/after, leftover kernel processes, per-kernel state
     (``--kernels N`` for a longer churn, in batches of 10)
  5  a kernel loops on PUT and DELETE kernel/policy with its own token for 10 s while 1 (then 3)
     stream views are open: requests sent, accepted and refused (429), store writes (inotify),
     stream messages, bytes and policy pushes per view, a well-behaved client's latency
  6  5 websocket clients that complete the handshake and never read, for 60 s, against servers
     of 8 and of 64 fake GPUs sampled every 0.1 s: server RSS every 5 s and after they close,
     the bytes the server holds for them, and a reading client's message rate
  7  one of 8 GPUs fails at open (its memory query times out after hanging 1 s; or it is lost):
     time from the server's start to GET gpus listing 7 GPUs served and the lost one with its
     reason, and from clearing the fault to the GPU served (its 30 s re-probe)

Prints one JSON document, then a markdown table. No assertions: figures are reported, not
enforced. ``--quick`` shortens every window (about a minute; numbers only indicative).
Everything is on 127.0.0.1, every loop is bounded in count and time, children are stopped.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

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
from _streams import StreamClients, stalled_stream_client  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_tfgpu.server.kernels.channel import CHANNEL_LIMITS, REPORT_TTL  # noqa: E402
from jupyter_tfgpu.policy.store import LOCK_TIMEOUT  # noqa: E402
from jupyter_tfgpu.server.api.backpressure import STALL_SECONDS  # noqa: E402
from jupyter_tfgpu.server.api.stream import PUSH_INTERVAL  # noqa: E402
from jupyter_tfgpu.server.sampling.sampler import LOST_RETRY_SECONDS  # noqa: E402

MB = 2**20
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

FULL = {
    "flood_s": 12.0, "flood_threads": 4, "big_mb": 60, "big_every_s": 3.0, "big_max": 4,
    "after_s": REPORT_TTL + 5, "fault_s": 15.0, "recover_s": 40.0, "hold_s": 11.5,
    "kernels": 50, "batch": 10,
    "policy_flood_s": 10.0, "views": (1, 3),
    "stalled": 5, "stalled_s": 60.0, "stalled_gpus": (8, 64), "rss_every_s": 5.0,
    "after_close_s": 15.0, "lost_gpu": 3, "lost_kinds": ("timeout", "lost"),
    "reprobe_wait_s": LOST_RETRY_SECONDS + 15,
}  # fmt: skip
QUICK = {
    "flood_s": 4.0, "flood_threads": 4, "big_mb": 60, "big_every_s": 2.0, "big_max": 1,
    "after_s": 5.0, "fault_s": 5.0, "recover_s": 10.0, "hold_s": LOCK_TIMEOUT + 2,
    "kernels": 10, "batch": 5,
    "policy_flood_s": 4.0, "views": (1,),
    "stalled": 5, "stalled_s": 15.0, "stalled_gpus": (8, 64), "rss_every_s": 5.0,
    "after_close_s": 6.0, "lost_gpu": 3, "lost_kinds": ("timeout",),
    "reprobe_wait_s": LOST_RETRY_SECONDS + 15,
}  # fmt: skip

# NVML faults of section 2: (function, NVML_ERROR_ suffix, GPU or None for all, hang seconds).
FAULTS = [
    ("nvmlDeviceGetTemperature", "TIMEOUT", None, 0.0),
    ("nvmlDeviceGetPowerUsage", "TIMEOUT", None, 0.0),
    ("nvmlDeviceGetComputeRunningProcesses_v3", "UNKNOWN", 3, 0.05),
    ("nvmlDeviceGetGraphicsRunningProcesses_v3", "TIMEOUT", None, 0.02),
]

# Runs inside the hostile kernel: urllib only, every loop bounded by a deadline and a count.
HOSTILE = r"""
import collections, json, os, threading, time, urllib.error, urllib.request
URL = os.environ["TFGPU_SERVER_URL"].rstrip("/") + "/tfgpu/api/kernel/report"
TOKEN = os.environ["TFGPU_KERNEL_TOKEN"]
SECONDS, THREADS, BIG_EVERY, BIG_MAX, PER_THREAD = %(flood_s)r, %(threads)d, %(big_every)r, %(big_max)d, 20000
BIG = b'{"padding": "' + b"x" * (%(big_mb)d * 2**20) + b'"}'
UUID = "GPU-" + "f" * 124
HUGE = int("1" + "0" * 400)
counts = collections.defaultdict(collections.Counter)
lock = threading.Lock()

def send(body):
    headers = {"Authorization": "tfgpu-kernel " + TOKEN, "Content-Type": "application/json"}
    request = urllib.request.Request(URL, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(response.status)
    except urllib.error.HTTPError as err:
        return str(err.code)
    except Exception as err:
        return type(err).__name__

def worker(n):
    start = time.monotonic()
    deadline, next_big, bigs = start + SECONDS, start + BIG_EVERY * (n + 1) / THREADS, 0
    for i in range(PER_THREAD):
        now = time.monotonic()
        if now >= deadline:
            break
        if bigs < BIG_MAX and now >= next_big:
            kind, body, bigs, next_big = "60MB body", BIG, bigs + 1, next_big + BIG_EVERY
        else:
            kind = "huge figure" if i %% 3 == 2 else "distinct pid"
            device = {"uuid": UUID, "reserved": HUGE if kind == "huge figure" else 2**30}
            pid = 1 + n * PER_THREAD + i
            body = json.dumps({"framework": "torch", "pid": pid, "devices": [device]}).encode()
        code = send(body)
        with lock:
            counts[kind][code] += 1

started = time.monotonic()
threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join(SECONDS + 60)
print(json.dumps({"seconds": round(time.monotonic() - started, 2), "by_kind": counts}))
"""

# What a kernel leaves in the server when a framework runs in it (as tests/reliability/
# test_kernel_churn.py): a record in its report folder and a report over its own channel.
LEAVE_TRACES = """
import tfgpu_apply, tfgpu_report
tfgpu_apply.error(None, "churn benchmark: a record for the server to clean up", announce=False)
print(tfgpu_report.send_once("torch", [{"uuid": "GPU-churn", "reserved": 2**20}]))
"""

# Runs inside a kernel: PUT and DELETE kernel/policy in turn, as fast as answered, on a
# keep-alive connection, bounded by a deadline and a count. A request the server could not take
# because it had closed the connection (it closes it after a 429) is sent again once on a new one.
POLICY_LOOP = r"""
import collections, http.client, json, os, time, urllib.parse
URL = urllib.parse.urlsplit(os.environ["TFGPU_SERVER_URL"])
PATH = URL.path.rstrip("/") + "/tfgpu/api/kernel/policy"
HEADERS = {"Authorization": "tfgpu-kernel " + os.environ["TFGPU_KERNEL_TOKEN"],
           "Content-Type": "application/json"}
SECONDS, MAX_REQUESTS = %(seconds)r, 200000
counts = collections.defaultdict(collections.Counter)
connections = 1
conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=30)
started = time.monotonic()
for i in range(MAX_REQUESTS):
    if time.monotonic() - started >= SECONDS:
        break
    method = "PUT" if i %% 2 == 0 else "DELETE"
    body = json.dumps({"memory_limit_mb": 1024 + i}) if method == "PUT" else None
    for attempt in (0, 1):
        try:
            conn.request(method, PATH, body=body, headers=HEADERS)
            response = conn.getresponse()
            response.read()
            code = str(response.status)
            break
        except (OSError, http.client.HTTPException) as err:
            conn.close()  # http.client connects again at the next request
            connections += 1
            code = type(err).__name__
    counts[method][code] += 1
print(json.dumps({"seconds": round(time.monotonic() - started, 2), "by_method": counts,
                  "connections": connections}))
"""

# Holds the store's lock for argv[2] seconds, as a second server on the same home would.
HOLDER = r"""
import fcntl, sys, time
with open(sys.argv[1], "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


# -- plumbing ------------------------------------------------------------------------------------


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, rounded for the report."""
    return None if seconds is None else round(seconds * 1000, 2)


def mib(nbytes: int | None) -> float | None:
    """Bytes to MiB, rounded for the report."""
    return None if nbytes is None else round(nbytes / MB, 1)


def server_figures(server: FakeServer) -> dict[str, Any]:
    """RSS (MiB), threads and child processes of the server process now."""
    proc = psutil.Process(server.pid)
    return {
        "rss_mib": mib(proc.memory_info().rss),
        "threads": proc.num_threads(),
        "children": len(proc.children(recursive=True)),
    }


class Poller:
    """A well-behaved client: GETs its paths in turn on one keep-alive connection, paced."""

    def __init__(self, server: FakeServer, paths: list[str], pace: float = 0.02):
        self.server, self.paths, self.pace = server, paths, pace
        self.by_status: collections.Counter[str] = collections.Counter()
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.rss_peak = 0
        self.on_answer: Callable[[str, Any, bytes], None] | None = None

    def run(self, until: Callable[[], bool], max_seconds: float, max_requests: int = 100_000):
        """Poll until ``until()`` or the time or count bound; sample the server's RSS meanwhile."""
        proc = psutil.Process(self.server.pid)
        deadline = time.monotonic() + max_seconds
        next_rss = 0.0
        for i in range(max_requests):
            now = time.monotonic()
            if until() or now >= deadline:
                break
            if now >= next_rss:
                self.rss_peak = max(self.rss_peak, proc.memory_info().rss)
                next_rss = now + 0.25
            path = self.paths[i % len(self.paths)]
            try:
                status, body, seconds = self.server.request(path)
            except (OSError, http.client.HTTPException) as err:
                status, body, seconds = type(err).__name__, b"", None
            self.by_status[str(status)] += 1
            if seconds is not None:
                self.latencies[path].append(seconds)
            if self.on_answer is not None:
                self.on_answer(path, status, body)
            time.sleep(self.pace)

    def summary(self) -> dict[str, Any]:
        """Requests served (200), the rest by status, latency p50/p99/max overall and per path."""
        every = [s for times in self.latencies.values() for s in times]
        return {
            "served": self.by_status.get("200", 0),
            "errors": sum(n for status, n in self.by_status.items() if status != "200"),
            "by_status": dict(self.by_status),
            "p50_ms": ms(percentile(every, 50)),
            "p99_ms": ms(percentile(every, 99)),
            "max_ms": ms(max(every)) if every else None,
            "p99_ms_by_path": {p: ms(percentile(t, 99)) for p, t in self.latencies.items()},
        }


def ready(server: FakeServer, kernel_id: str, code: str = "print('ready')") -> bool:
    """Run ``code`` in the kernel (bounded): True once it ran, as an opened notebook's kernel."""
    try:
        execute(server, kernel_id, code, timeout=90)
        return True
    except Exception:  # noqa: BLE001 - counted, not raised
        return False


# -- 1: hostile kernel flood ---------------------------------------------------------------------


def section_flood(p: dict[str, Any]) -> dict[str, Any]:
    """A kernel floods its channel; a well-behaved client polls; the server's RSS over time."""
    with FakeServer() as server:
        idle = server_figures(server)
        session = start_session(server, "hostile.ipynb")
        kernel_id = session["kernel"]["id"]
        execute(server, kernel_id, "print('ready')", timeout=90)
        before = server_figures(server)
        code = HOSTILE % {
            "flood_s": p["flood_s"], "threads": p["flood_threads"], "big_mb": p["big_mb"],
            "big_every": p["big_every_s"], "big_max": p["big_max"],
        }  # fmt: skip
        hostile: dict[str, Any] = {}

        def run_hostile() -> None:
            try:
                out = execute(server, kernel_id, code, timeout=p["flood_s"] + 120)
                hostile.update(json.loads(out.strip().splitlines()[-1]))
            except Exception as err:  # noqa: BLE001 - reported, not raised
                hostile["error"] = f"{type(err).__name__}: {err}"

        flood = threading.Thread(target=run_hostile, daemon=True)
        poller = Poller(
            server, ["tfgpu/api/status", "tfgpu/api/gpus", "tfgpu/api/kernels", "metrics"]
        )
        started = time.monotonic()
        flood.start()
        poller.run(until=lambda: not flood.is_alive(), max_seconds=p["flood_s"] + 150)
        flood.join(5)
        flood_s = time.monotonic() - started
        end = server_figures(server)
        # Then polled slowly for REPORT_TTL and more, so the kernel's reports age out.
        after_poller = Poller(
            server, ["tfgpu/api/status", "tfgpu/api/kernels", "metrics"], pace=0.5
        )
        after_poller.run(until=lambda: False, max_seconds=p["after_s"])
        after = server_figures(server)
        call(server, "DELETE", f"api/sessions/{session['id']}")

    by_status: collections.Counter[str] = collections.Counter()
    for counts in hostile.get("by_kind", {}).values():
        by_status.update(counts)
    return {
        "flood_s": round(flood_s, 1),
        "hostile_kernel": {
            "requests": sum(by_status.values()),
            "by_status": dict(by_status),
            "by_kind": hostile.get("by_kind"),
            "error": hostile.get("error"),
        },
        "client_during_flood": poller.summary(),
        "client_after_flood": after_poller.summary(),
        "server": {
            "idle_before_kernel": idle,
            "before_flood": before,
            "peak_rss_mib_during_flood": mib(poller.rss_peak),
            "end_of_flood": end,
            f"{p['after_s']:g}s_after": after,
        },
        "params": {
            k: p[k]
            for k in ("flood_s", "flood_threads", "big_mb", "big_every_s", "big_max", "after_s")
        },
    }


# -- 2: NVML faults mid-run ----------------------------------------------------------------------


def section_faults(p: dict[str, Any]) -> dict[str, Any]:
    """Faults on several NVML calls for a while; what the client sees, during and after."""
    extra = ["--TFGPU.slow_interval=1", "--TFGPU.process_interval=1", "--TFGPU.nvml_budget=0.2"]
    with FakeServer(extra=extra) as server:
        rows_seen = collections.Counter()
        reasons: collections.Counter[str] = collections.Counter()
        last_rows: list[dict[str, Any]] = []

        def on_answer(path: str, status: Any, body: bytes) -> None:
            if path != "tfgpu/api/gpus" or status != 200:
                return
            rows = json.loads(body)["gpus"]
            last_rows[:] = rows
            rows_seen["rows"] += len(rows)
            rows_seen["with_errors"] += sum(1 for r in rows if r.get("errors"))
            rows_seen["lost"] += sum(1 for r in rows if r.get("lost"))
            for r in rows:
                for field, reason in (r.get("errors") or {}).items():
                    reasons[f"{field}: {reason}"] += 1

        paths = ["tfgpu/api/status", "tfgpu/api/gpus", "metrics"]
        baseline = Poller(server, paths)
        baseline.run(until=lambda: False, max_seconds=3)
        inject = [
            {"name": name, "error": error, "gpu": gpu, "delay": delay}
            for name, error, gpu, delay in FAULTS
        ]
        status, injected, _ = call(server, "POST", "bench/faults", {"inject": inject})
        during = Poller(server, paths)
        during.on_answer = on_answer
        during.run(until=lambda: False, max_seconds=p["fault_s"])
        during_rows = dict(rows_seen)
        _, raised, _ = call(server, "GET", "bench/faults")
        _, cleared, _ = call(server, "POST", "bench/faults", {"clear": True})
        cleared_at = time.monotonic()

        def clean(rows: list[dict[str, Any]]) -> bool:
            return bool(rows) and all(
                not r.get("errors") and not r.get("lost") and r.get("temperature") is not None
                and (r.get("power") or {}).get("draw") is not None and r.get("processes")
                for r in rows
            )  # fmt: skip

        clean_at: dict[str, float] = {}

        def after_answer(path: str, status: Any, body: bytes) -> None:
            on_answer(path, status, body)
            if "not lost" not in clean_at and clean([r for r in last_rows if not r.get("lost")]):
                clean_at["not lost"] = time.monotonic() - cleared_at

        last_rows.clear()
        after = Poller(server, paths)
        after.on_answer = after_answer
        after.run(until=lambda: clean(last_rows), max_seconds=p["recover_s"])
        back = clean(last_rows)
        metrics_status, _, _ = server.request("metrics")
    return {
        "fault_s": p["fault_s"],
        "faults": inject,
        "inject_status": status,
        "faults_raised": cleared.get("faults_raised") if cleared else None,
        "faults_raised_by_function": {
            k: v["raised"] for k, v in (raised or {}).get("active", {}).items()
        },
        "client_baseline": baseline.summary(),
        "client_during_faults": during.summary(),
        "gpu_rows_during_faults": during_rows,
        "error_reasons_seen": dict(reasons.most_common(8)),
        "client_after_clear": after.summary(),
        "fields_back_after_clear": back,
        "seconds_to_recover": round(time.monotonic() - cleared_at, 2) if back else None,
        "fields_back_on_gpus_not_lost_s": round(clean_at["not lost"], 2) if clean_at else None,
        "lost_gpus_after_clear": [r.get("index") for r in last_rows if r.get("lost")],
        "recover_window_s": p["recover_s"],
        "last_rows_after_clear": [
            {k: r.get(k) for k in ("index", "lost", "errors", "temperature")}
            for r in last_rows
            if r.get("errors") or r.get("lost")
        ],
        "config": extra,
        "metrics_after": metrics_status,
        "injected_ack": injected is not None,
    }


# -- 3: held store lock --------------------------------------------------------------------------


def section_store_lock(p: dict[str, Any]) -> dict[str, Any]:
    """Another process holds the store's flock: reads, a PUT while held, a PUT after."""
    state = tempfile.TemporaryDirectory(prefix="tfgpu-bench-store-")
    store = Path(state.name) / "state" / "policies.json"
    # PolicyStore.lock_path: writers flock "<store>.lock" (the store file itself is replaced).
    lock_path = store.with_name(store.name + ".lock")
    holder: subprocess.Popen | None = None
    try:
        with FakeServer(extra=[f"--TFGPU.policy_store_path={store}"]) as server:
            notebook = {"type": "notebook", "format": "json", "content": NOTEBOOK}
            call(server, "PUT", "api/contents/nb.ipynb", notebook)
            first = call(server, "PUT", "tfgpu/api/policies/nb.ipynb", {"memory_growth": True})
            session = start_session(server, "nb.ipynb")
            store.parent.mkdir(parents=True, exist_ok=True)
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(lock_path), str(p["hold_s"])],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            locked = holder.stdout.readline().strip()  # the holder prints at once
            held_since = time.monotonic()
            puts: list[dict[str, Any]] = []

            def writer() -> None:
                for n in range(3):  # bounded; each waits up to LOCK_TIMEOUT
                    if time.monotonic() - held_since + LOCK_TIMEOUT + 0.5 > p["hold_s"]:
                        break  # it could not time out while the lock is still held
                    body = {"memory_growth": bool(n % 2)}
                    code, answer, seconds = call(server, "PUT", "tfgpu/api/policies/nb.ipynb", body)
                    puts.append({
                        "status": code, "seconds": round(seconds, 2),
                        "reason": (answer or {}).get("reason"),
                        "held": holder.poll() is None,
                    })  # fmt: skip

            writing = threading.Thread(target=writer, daemon=True)
            writing.start()
            poller = Poller(server, [
                "tfgpu/api/status", "tfgpu/api/gpus", "tfgpu/api/kernels", "tfgpu/api/policies",
            ])  # fmt: skip
            poller.run(until=lambda: holder.poll() is not None, max_seconds=p["hold_s"] + 30)
            held_s = time.monotonic() - held_since
            writing.join(LOCK_TIMEOUT + 30)
            code, answer, seconds = call(
                server, "PUT", "tfgpu/api/policies/nb.ipynb", {"memory_growth": False}
            )
            after = {
                "status": code,
                "seconds": round(seconds, 3),
                "policy": (answer or {}).get("policy"),
            }
            call(server, "DELETE", f"api/sessions/{session['id']}")
    finally:
        if holder is not None:
            stop_process(holder)
        state.cleanup()
    return {
        "hold_s": round(held_s, 1),
        "holder": locked,
        "lock_timeout_s": LOCK_TIMEOUT,
        "put_before_hold": first[0],
        "reads_while_held": poller.summary(),
        "puts_while_held": puts,
        "put_after_release": after,
    }


# -- 4: kernel churn -----------------------------------------------------------------------------


def kernel_state(server: FakeServer) -> dict[str, int | str]:
    """Kernel ids the extension keeps something for, counted per place (bench endpoint)."""
    status, state, _ = call(server, "GET", "bench/kernel-state")
    if status != 200:
        return {"unavailable": str(status)}
    return {place: len(ids) if isinstance(ids, list) else ids for place, ids in state.items()}


def section_churn(p: dict[str, Any]) -> dict[str, Any]:
    """Kernels started and stopped in batches through the REST API; what stays behind."""
    with FakeServer() as server:
        idle = server_figures(server)
        warm = start_session(server, "warm-up.ipynb")  # one-time imports before "before"
        ready(server, warm["kernel"]["id"])
        call(server, "DELETE", f"api/sessions/{warm['id']}")
        time.sleep(2)
        before = server_figures(server)
        batches = []
        pool = ThreadPoolExecutor(max_workers=p["batch"])
        try:
            for b in range(p["kernels"] // p["batch"]):
                names = [f"churn-{b}-{n}.ipynb" for n in range(p["batch"])]
                started = time.monotonic()
                sessions = list(pool.map(start_session, [server] * len(names), names))
                start_s = time.monotonic() - started
                codes = [LEAVE_TRACES] + ["print('ready')"] * (len(sessions) - 1)
                ids = [s["kernel"]["id"] for s in sessions]
                ready_n = sum(pool.map(ready, [server] * len(ids), ids, codes))
                running = server_figures(server)
                state_running = kernel_state(server)
                started = time.monotonic()
                codes = list(pool.map(
                    lambda s: call(server, "DELETE", f"api/sessions/{s['id']}")[0], sessions
                ))  # fmt: skip
                batches.append({
                    "start_s": round(start_s, 2), "ready": ready_n,
                    "stop_s": round(time.monotonic() - started, 2),
                    "delete_statuses": dict(collections.Counter(map(str, codes))),
                    "server_while_running": running, "state_while_running": state_running,
                })  # fmt: skip
        finally:
            pool.shutdown(wait=True)
        # Then wait (bounded) for the kernels to exit and the periodic prune to forget them.
        settled_at = time.monotonic()
        while time.monotonic() - settled_at < 60:
            state = kernel_state(server)
            figures = server_figures(server)
            if figures["children"] == 0 and not any(
                v for v in state.values() if isinstance(v, int)
            ):
                break
            time.sleep(0.5)
        settle_s = time.monotonic() - settled_at
        _, kernels_left, _ = call(server, "GET", "api/kernels")
        after = server_figures(server)
    return {
        "kernels": p["kernels"],
        "batch": p["batch"],
        "server": {"idle": idle, "before": before, "after": after},
        "rss_growth_mib": round(after["rss_mib"] - before["rss_mib"], 1),
        "leftover_kernel_processes": after["children"],
        "kernels_listed_after": len(kernels_left) if isinstance(kernels_left, list) else None,
        "state_after": state,
        "settle_s": round(settle_s, 1),
        "rss_mib_by_batch": [b["server_while_running"]["rss_mib"] for b in batches],
        "batches": batches,
    }


# -- 5: a kernel's policy flood ------------------------------------------------------------------


def store_writes(store: Path):
    """Counts atomic rewrites of ``store`` as they happen: each is a rename onto its path, seen
    by inotify (watchdog), so none is missed however fast they come. Start/stop it yourself."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Renames(FileSystemEventHandler):
        count = 0

        def on_moved(self, event) -> None:
            if Path(os.fsdecode(event.dest_path)) == store:
                self.count += 1

    renames = Renames()
    observer = Observer()
    observer.schedule(renames, str(store.parent))
    return observer, renames


def policy_revision(server: FakeServer, notebook: str) -> int | None:
    """The server's policy-change counter (``revision`` of GET policies/<notebook>)."""
    status, body, _ = call(server, "GET", f"tfgpu/api/policies/{notebook}")
    return (body or {}).get("revision") if status == 200 else None


def policy_flood_round(server: FakeServer, store: Path, views: int, p: dict[str, Any]):
    """One kernel loops on PUT/DELETE kernel/policy while ``views`` stream clients are open."""
    notebook = f"policy-flood-{views}.ipynb"
    session = start_session(server, notebook)
    kernel_id = session["kernel"]["id"]
    execute(server, kernel_id, "print('ready')", timeout=90)
    revision_before = policy_revision(server, notebook)
    kernel: dict[str, Any] = {}

    def run_loop() -> None:
        try:
            out = execute(server, kernel_id, POLICY_LOOP % {"seconds": p["policy_flood_s"]},
                          timeout=p["policy_flood_s"] + 120)  # fmt: skip
            kernel.update(json.loads(out.strip().splitlines()[-1]))
        except Exception as err:  # noqa: BLE001 - reported, not raised
            kernel["error"] = f"{type(err).__name__}: {err}"

    observer, renames = store_writes(store)
    observer.start()
    try:
        limit_s = p["policy_flood_s"] + 150
        with StreamClients(server, views, classify=True, max_seconds=limit_s) as clients:
            loop = threading.Thread(target=run_loop, daemon=True)
            poller = Poller(server, ["tfgpu/api/status", "tfgpu/api/gpus", "tfgpu/api/kernels"])
            loop.start()
            poller.run(until=lambda: not loop.is_alive(), max_seconds=limit_s)
            loop.join(5)
            time.sleep(1.0)  # the trailing push of the last change (0.25 s) reaches the views
    finally:
        observer.stop()
        observer.join(10)
    revision_after = policy_revision(server, notebook)
    call(server, "DELETE", f"api/sessions/{session['id']}")
    by_method = kernel.get("by_method", {})
    statuses: collections.Counter[str] = collections.Counter()
    for counts in by_method.values():
        statuses.update(counts)
    per_view = clients.summary.get("per_client", [])
    return {
        "views": views,
        "kernel_seconds": kernel.get("seconds"),
        "kernel_error": kernel.get("error"),
        "requests": sum(statuses.values()),
        "accepted": statuses.get("200", 0),
        "refused_429": statuses.get("429", 0),
        "by_method": by_method,
        "connections_opened": kernel.get("connections"),
        "store_writes": renames.count,
        "policy_revisions": (
            None if None in (revision_before, revision_after) else revision_after - revision_before
        ),
        "views_window_s": clients.summary.get("seconds"),
        "per_view": [
            {"messages": v["messages"], "kib": round(v["bytes"] / 1024, 1),
             "policy_pushes": v["same_snapshot"], "new_revisions": v["new_revision"]}
            for v in per_view
        ],  # fmt: skip
        "client": poller.summary(),
    }


def section_policy_flood(p: dict[str, Any]) -> dict[str, Any]:
    """A kernel loops on PUT and DELETE kernel/policy with its own token; what reaches the store,
    the open views and a well-behaved client; with 1, then 3 views (a fresh kernel each)."""
    state = tempfile.TemporaryDirectory(prefix="tfgpu-bench-policy-")
    store = Path(state.name) / "state" / "policies.json"
    store.parent.mkdir(parents=True)
    try:
        with FakeServer(extra=[f"--TFGPU.policy_store_path={store}"]) as server:
            rounds = [policy_flood_round(server, store, views, p) for views in p["views"]]
    finally:
        state.cleanup()
    return {
        "flood_s": p["policy_flood_s"],
        "limit": CHANNEL_LIMITS["policy"].describe(),
        "push_interval_s": PUSH_INTERVAL,
        "store_writes_counted_by": "inotify renames onto the store's path (watchdog), from outside",
        "rounds": rounds,
    }


# -- 6: stalled stream clients -------------------------------------------------------------------


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


# -- 7: one GPU lost at open ---------------------------------------------------------------------


# (name, the fault on one GPU from before the server starts)
LOST_AT_OPEN = {
    "timeout": {"name": "nvmlDeviceGetMemoryInfo", "error": "TIMEOUT", "delay": 1.0},
    "lost": {"name": "nvmlDeviceGetHandleByIndex", "error": "GPU_IS_LOST", "delay": 0.0},
}


def served(row: dict[str, Any]) -> bool:
    """A GPU row with its readings: not lost, memory and temperature read."""
    return (not row.get("lost") and row.get("temperature") is not None
            and (row.get("memory") or {}).get("used") is not None)  # fmt: skip


def lost_at_open_round(kind: str, p: dict[str, Any]) -> dict[str, Any]:
    """8 GPUs, one failing at open: when GET gpus lists 7 served and the lost one with its
    reason, and, once the fault is cleared, when that GPU is served (its 30 s re-probe)."""
    gpu = p["lost_gpu"]
    fault = {**LOST_AT_OPEN[kind], "gpu": gpu}
    launcher = ["--gpus", "8", "--start-faults", json.dumps([fault])]
    with FakeServer(launcher=launcher, wait_for_sample=False) as server:
        t0 = server.started_at
        reasons: collections.Counter[str] = collections.Counter()
        listed = rows = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = server.get("tfgpu/api/gpus").get("gpus") or []
            if len(rows) == 8:
                others = [r for i, r in enumerate(rows) if i != gpu]
                said = rows[gpu].get("lost") and rows[gpu].get("lost_reason")
                if said and all(served(r) for r in others):
                    listed = time.monotonic()
                    break
            else:
                reasons[str(server.get("tfgpu/api/status").get("reason"))] += 1
            time.sleep(0.02)
        status = server.get("tfgpu/api/status")
        lost_row = {k: rows[gpu].get(k) for k in ("index", "lost", "lost_reason")} if rows else None
        log_lines = [line.strip() for line in server.log_tail(200).splitlines()
                     if f"GPU {gpu}:" in line]  # fmt: skip
        _, cleared, _ = call(server, "POST", "bench/faults", {"clear": True})
        cleared_at = time.monotonic()
        back = None
        while time.monotonic() - cleared_at < p["reprobe_wait_s"]:
            rows = server.get("tfgpu/api/gpus").get("gpus") or []
            if len(rows) == 8 and all(served(r) for r in rows):
                back = time.monotonic()
                break
            time.sleep(0.1)
    return {
        "fault": fault,
        "faults_raised": (cleared or {}).get("faults_raised"),
        "serving_s": round(server.ready_at - t0, 2),
        "listed_s": round(listed - t0, 2) if listed else None,
        "listed_after_serving_s": round(listed - server.ready_at, 2) if listed else None,
        "status_reasons_before": dict(reasons),
        "status_when_listed": {k: status.get(k) for k in ("available", "device_count", "reason")},
        "lost_row": lost_row,
        "log": log_lines[:2],
        "served_after_clear_s": round(back - cleared_at, 2) if back else None,
        "served_after_listed_s": round(back - listed, 2) if back and listed else None,
        "wait_bound_s": p["reprobe_wait_s"],
    }


def section_lost_at_open(p: dict[str, Any]) -> dict[str, Any]:
    """One of 8 GPUs fails at open (a timeout, or lost); the other 7 are served."""
    return {
        "lost_retry_s": LOST_RETRY_SECONDS,
        "rounds": {kind: lost_at_open_round(kind, p) for kind in p["lost_kinds"]},
    }


# -- report --------------------------------------------------------------------------------------


SECTIONS = {
    "1": ("hostile_kernel_flood", section_flood),
    "2": ("nvml_faults", section_faults),
    "3": ("held_store_lock", section_store_lock),
    "4": ("kernel_churn", section_churn),
    "5": ("policy_flood", section_policy_flood),
    "6": ("stalled_clients", section_stalled),
    "7": ("gpu_lost_at_open", section_lost_at_open),
}


def markdown(result: dict[str, Any]) -> str:
    """The headline figures as a markdown table."""
    rows = [("section", "figure", "value")]
    s = result["sections"]
    if "hostile_kernel_flood" in s and "error" not in s["hostile_kernel_flood"]:
        f = s["hostile_kernel_flood"]
        c, srv = f["client_during_flood"], f["server"]
        after_key = next(k for k in srv if k.endswith("s_after"))
        rows += [
            ("1 flood", "hostile kernel answers by status", json.dumps(f["hostile_kernel"]["by_status"])),
            ("1 flood", "client served / errors", f"{c['served']} / {c['errors']}"),
            ("1 flood", "client p50 / p99 / max ms", f"{c['p50_ms']} / {c['p99_ms']} / {c['max_ms']}"),
            ("1 flood", "server RSS MiB before / peak / end / " + after_key,
             f"{srv['before_flood']['rss_mib']} / {srv['peak_rss_mib_during_flood']} / "
             f"{srv['end_of_flood']['rss_mib']} / {srv[after_key]['rss_mib']}"),
        ]  # fmt: skip
    if "nvml_faults" in s and "error" not in s["nvml_faults"]:
        f = s["nvml_faults"]
        c = f["client_during_faults"]
        rows += [
            ("2 NVML faults", "faults raised", f["faults_raised"]),
            ("2 NVML faults", "client served / non-200", f"{c['served']} / {c['errors']}"),
            ("2 NVML faults", "client p99 ms", c["p99_ms"]),
            ("2 NVML faults", "GPU rows with errors / rows / lost",
             f"{f['gpu_rows_during_faults'].get('with_errors')} / {f['gpu_rows_during_faults'].get('rows')}"
             f" / {f['gpu_rows_during_faults'].get('lost')}"),
            ("2 NVML faults", "all fields back after clear (s)", f"{f['fields_back_after_clear']} ({f['seconds_to_recover']})"),
            ("2 NVML faults", "fields back on GPUs not lost (s)", f["fields_back_on_gpus_not_lost_s"]),
            ("2 NVML faults", f"GPUs still lost {f['recover_window_s']:g} s after clear", f["lost_gpus_after_clear"]),
        ]  # fmt: skip
    if "held_store_lock" in s and "error" not in s["held_store_lock"]:
        f = s["held_store_lock"]
        c = f["reads_while_held"]
        rows += [
            ("3 store lock", "reads served / errors while held", f"{c['served']} / {c['errors']}"),
            ("3 store lock", "reads p99 / max ms", f"{c['p99_ms']} / {c['max_ms']}"),
            ("3 store lock", "PUT while held: status (s)",
             ", ".join(f"{x['status']} ({x['seconds']})" for x in f["puts_while_held"])),
            ("3 store lock", "PUT after release", f["put_after_release"]["status"]),
        ]  # fmt: skip
    if "kernel_churn" in s and "error" not in s["kernel_churn"]:
        f = s["kernel_churn"]
        b, a = f["server"]["before"], f["server"]["after"]
        rows += [
            ("4 churn", f"{f['kernels']} kernels: RSS MiB before / after", f"{b['rss_mib']} / {a['rss_mib']}"),
            ("4 churn", "server threads before / after", f"{b['threads']} / {a['threads']}"),
            ("4 churn", "leftover kernel processes", f["leftover_kernel_processes"]),
            ("4 churn", "per-kernel state left", json.dumps({k: v for k, v in f["state_after"].items() if v})),
        ]  # fmt: skip
    if "policy_flood" in s and "error" not in s["policy_flood"]:
        f = s["policy_flood"]
        for r in f["rounds"]:
            views = ", ".join(
                f"{v['messages']} msgs / {v['kib']} KiB / {v['policy_pushes']} pushes"
                for v in r["per_view"]
            )
            c = r["client"]
            rows += [
                (f"5 policy flood, {r['views']} view(s)", "requests / accepted / 429",
                 f"{r['requests']} / {r['accepted']} / {r['refused_429']}"),
                (f"5 policy flood, {r['views']} view(s)", "store writes / policy revisions",
                 f"{r['store_writes']} / {r['policy_revisions']}"),
                (f"5 policy flood, {r['views']} view(s)", f"per view in {r['views_window_s']} s", views),
                (f"5 policy flood, {r['views']} view(s)", "client served / errors, p50 / p99 ms",
                 f"{c['served']} / {c['errors']}, {c['p50_ms']} / {c['p99_ms']}"),
            ]  # fmt: skip
    if "stalled_clients" in s and "error" not in s["stalled_clients"]:
        for r in s["stalled_clients"]["rounds"]:
            name = f"6 stalled, {r['gpus']} GPUs"
            rows += [
                (name, "RSS MiB every 5 s", " ".join(str(t["rss_mib"]) for t in r["every_5s"])),
                (name, "RSS MiB before / after close", f"{r['before']['rss_mib']} / "
                 + " / ".join(str(a["rss_mib"]) for a in r["after_close"])),
                (name, "held for clients KiB (max)", max(t.get("pending_kib", 0) for t in r["every_5s"])),
                (name, "reading client msgs/s (fast interval s)",
                 f"{r['reading_client']['per_s']} ({r['fast_interval_s']})"),
            ]  # fmt: skip
    if "gpu_lost_at_open" in s and "error" not in s["gpu_lost_at_open"]:
        for kind, r in s["gpu_lost_at_open"]["rounds"].items():
            rows += [
                (f"7 lost at open ({kind})", "serving / listed 7 + lost s from start",
                 f"{r['serving_s']} / {r['listed_s']}"),
                (f"7 lost at open ({kind})", "lost reason", (r["lost_row"] or {}).get("lost_reason")),
                (f"7 lost at open ({kind})", "served after clear s", r["served_after_clear_s"]),
            ]  # fmt: skip
    for name, data in s.items():
        if "error" in data:
            rows.append((name, "error", data["error"].splitlines()[-1]))
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines)


def main() -> int:
    """Run the chosen sections; print the JSON document and a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about a minute)")
    parser.add_argument("--sections", default="1234567", help="which sections to run, e.g. '57'")
    parser.add_argument("--kernels", type=int, default=None, help="section 4: kernels in all")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    params = dict(QUICK if args.quick else FULL)
    if args.kernels:
        params["kernels"] = max(params["batch"], min(args.kernels, 1000))
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "sections": {},
    }
    started = time.monotonic()
    for key in args.sections:
        if key not in SECTIONS:
            continue
        name, run = SECTIONS[key]
        t0 = time.monotonic()
        try:
            result["sections"][name] = run(params)
        except Exception:  # noqa: BLE001 - one broken section must not lose the others
            result["sections"][name] = {"error": traceback.format_exc()[-3000:]}
        result["sections"][name]["section_s"] = round(time.monotonic() - t0, 1)
        print(f"[{name}] done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    result["total_s"] = round(time.monotonic() - started, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

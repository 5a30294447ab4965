"""Section 1: a hostile kernel floods ``kernel/report`` while a well-behaved client polls."""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any

from _harness import FakeServer, call, execute, start_session

from .plumbing import Poller, mib, server_figures

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

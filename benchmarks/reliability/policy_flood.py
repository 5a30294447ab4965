"""Section 5: a kernel loops on PUT and DELETE ``kernel/policy`` while stream views are open."""

from __future__ import annotations

import collections
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _harness import FakeServer, call, execute, start_session
from _streams import StreamClients
from jupyter_tfgpu.server.stream import PUSH_INTERVAL
from jupyter_tfgpu.server.kernels.channel import CHANNEL_LIMITS

from .plumbing import Poller

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

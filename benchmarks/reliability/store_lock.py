"""Section 3: another process holds the policy store's ``flock``; reads and PUTs meanwhile."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _harness import FakeServer, call, start_session, stop_process
from jupyter_tfgpu.policy.store import LOCK_TIMEOUT

from .plumbing import Poller

NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

# Holds the store's lock for argv[2] seconds, as a second server on the same home would.
HOLDER = r"""
import fcntl, sys, time
with open(sys.argv[1], "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


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

"""Another process holding the policy store's lock (a second server on the same home, NFS)
never freezes this server: reads answer from memory, writes give up with a 503 that says why.

Real server, a real kernel, and a real second process that takes the lock with ``flock``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.kernel_helpers import start_session

NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
# Holds the lock until its stdin closes. It lets go by itself after a while only so that a
# server frozen by the lock (the bug) fails this test instead of hanging it.
HOLDER = r"""
import fcntl, select, sys
with open(sys.argv[1], "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("locked", flush=True)
    asked, _, _ = select.select([sys.stdin], [], [], float(sys.argv[2]))
    print("released: " + ("asked" if asked else "gave up waiting"), flush=True)
"""
HOLDER_GIVES_UP_AFTER = 30


@pytest.fixture
def tfgpu_config(tmp_path):
    """The simulated backend and a store of the test's own."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "policy_store_path": str(tmp_path / "state" / "policies.json"),
    }


async def fetch(jp_fetch, method: str, *parts: str, body=None):
    """A request under tfgpu/api/; returns (status, decoded JSON)."""
    kwargs = {"method": method, "raise_error": False}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    response = await jp_fetch("tfgpu", "api", *parts, **kwargs)
    return response.code, json.loads(response.body) if response.body else None


async def test_a_store_locked_by_another_process_does_not_freeze_the_server(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """While another process holds the lock: every read answers, a write gets 503 with why."""
    # Given a notebook with a policy and a running kernel, a short lock timeout, and another
    # process holding the store's lock
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    code, _ = await fetch(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": True})
    assert code == 200
    await start_session(jp_fetch, "nb.ipynb")
    store = jp_serverapp.web_app.settings["tfgpu_services"].policies.store
    store.lock_timeout = 0.5
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, f"{store.path}.lock", str(HOLDER_GIVES_UP_AFTER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert await asyncio.to_thread(holder.stdout.readline) == "locked\n"

        # When a policy is written and, meanwhile, the read endpoints are fetched
        write = asyncio.ensure_future(
            fetch(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": False})
        )
        reads = {
            path: await fetch(jp_fetch, "GET", *path.split("/"))
            for path in ("status", "gpus", "kernels", "policies", "policies/nb.ipynb", "config")
        }
        put_code, put = await write
    finally:
        # The holder lets go only now, after every request above has been answered.
        holder.stdin.close()
        released = await asyncio.to_thread(holder.stdout.readline)
        await asyncio.to_thread(holder.wait, 60)

    # Then every read answered while the other process still held the lock
    assert released == "released: asked\n"
    assert {path: code for path, (code, _) in reads.items()} == dict.fromkeys(reads, 200)
    assert reads["policies"][1]["policies"] == {"nb.ipynb": {"memory_growth": True}}
    [kernel] = reads["kernels"][1]["kernels"]
    assert kernel["policy"]["memory_growth"] is True
    # and the write gave up, said why, and changed nothing
    assert put_code == 503
    assert put["reason"] == "policy store unavailable"
    assert "locked by another process" in put["message"]
    assert store.get("nb.ipynb") == {"memory_growth": True}
    # and once the lock is free, the same write goes through
    code, after = await fetch(
        jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": False}
    )
    assert (code, after["policy"]) == (200, {"memory_growth": False})

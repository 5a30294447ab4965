"""A policy change made anywhere reaches every stream client at once, numbered."""

from __future__ import annotations

import asyncio
import json

import pytest

from jupyter_tfgpu.policy.changes import PolicyChanges
from jupyter_tfgpu.policy.store import PolicyStore
from jupyter_tfgpu.server.api.handlers import SERVICES_KEY


@pytest.fixture
def tfgpu_config():
    """Snapshots 30 s apart: any message within the test's waits is a pushed one."""
    return {"backend": "simulated", "sample_interval": 30, "history_seconds": 60}


async def next_message(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.read_message(), timeout))


async def policies_after(ws, revision: int, timeout: float = 10.0) -> dict:
    """The first message whose policy revision is past ``revision``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = await next_message(ws, max(0.1, deadline - loop.time()))
        if message["policies"]["revision"] > revision:
            return message["policies"]


async def test_a_rest_write_is_pushed_at_once_with_its_revision(jp_fetch, jp_ws_fetch):
    """PUT and DELETE each send every client a message naming the notebook, between samples."""
    # Given a client on the stream, and its first message
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        first = (await next_message(ws))["policies"]
        assert first["revision"] == 0 and first["changes"] == []

        # When a policy is put, then deleted, through the REST API
        await jp_fetch("tfgpu", "api", "policies", "team", "a.ipynb", method="PUT", body='{"memory_growth": true}')
        put = await next_message(ws)
        described = json.loads((await jp_fetch("tfgpu", "api", "policies", "team", "a.ipynb")).body)
        await jp_fetch("tfgpu", "api", "policies", "team", "a.ipynb", method="DELETE")
        deleted = await next_message(ws)
    finally:
        ws.close()

    # Then each came at once (snapshots are 30 s apart), numbered, naming the notebook
    assert put["policies"]["epoch"] == first["epoch"]
    assert put["policies"]["revision"] == 1
    assert put["policies"]["changes"] == [{"revision": 1, "path": "team/a.ipynb"}]
    assert described["revision"] == 1
    assert deleted["policies"]["changes"][-1] == {"revision": 2, "path": "team/a.ipynb"}
    # And the message is the latest snapshot's, the same GPUs and kernels
    assert put["timestamp"] == deleted["timestamp"] and put["gpus"] == deleted["gpus"]


async def test_another_process_write_is_pushed(jp_fetch, jp_ws_fetch, jp_serverapp):
    """A write to the store file by another server (or a script) reaches clients within seconds."""
    # Given a client on the stream
    store_path = jp_serverapp.web_app.settings[SERVICES_KEY].policies.store.path
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        await next_message(ws)

        # When another process writes the store file
        other = PolicyStore(store_path)
        await asyncio.to_thread(other.put, "shared.ipynb", {"memory_limit_mb": 1024})
        changes = await policies_after(ws, 0)
    finally:
        ws.close()

    # Then the client is told which notebook changed
    assert changes["changes"] == [{"revision": 1, "path": "shared.ipynb"}]


async def test_renaming_a_notebook_names_both_paths(jp_fetch, jp_ws_fetch, jp_root_dir):
    """Its policy moves with a renamed notebook; views of the old and the new path both hear."""
    # Given a notebook with a policy, and a client on the stream
    (jp_root_dir / "old.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    await jp_fetch("tfgpu", "api", "policies", "old.ipynb", method="PUT", body='{"memory_growth": true}')
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        revision = (await next_message(ws))["policies"]["revision"]

        # When the notebook is renamed through the contents API
        await jp_fetch("api", "contents", "old.ipynb", method="PATCH", body=json.dumps({"path": "new.ipynb"}))
        changes = await policies_after(ws, revision)
    finally:
        ws.close()

    # Then one change names both paths
    assert {c["path"] for c in changes["changes"] if c["revision"] > revision} == {"old.ipynb", "new.ipynb"}


def test_changes_keep_a_window_and_number_each_write():
    """One write is one revision, whatever it names; only the last changes are kept."""
    # Given
    changes = PolicyChanges(kept=3)
    heard = []
    changes.subscribe(lambda: heard.append(changes.revision))

    # When
    changes.record(["a.ipynb", "b.ipynb"])
    changes.record([])
    changes.record(["c.ipynb"])
    changes.record(["d.ipynb"])

    # Then
    shown = changes.to_json()
    assert shown["revision"] == 3
    assert shown["changes"] == [
        {"revision": 1, "path": "b.ipynb"},
        {"revision": 2, "path": "c.ipynb"},
        {"revision": 3, "path": "d.ipynb"},
    ]
    assert heard == [1, 2, 3]

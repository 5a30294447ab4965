"""A poisoned store file, at start and while the server runs: a JSON nest 100,000 deep, a FIFO
at the store path, a store folder that cannot be made. Any notebook can do the first two (the
store sits in the user's data folder). The server starts and serves, the problem is reported,
policy writes (REST and a kernel's) go on, and a good file put back is read again.

Real server, a real kernel, the simulated backend.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from tests.kernel_helpers import kernel_headers, kernel_token, poll, start_session

NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
DEEP_NEST = b"[" * 100_000 + b"]" * 100_000
GOOD = {"version": 1, "policies": {"kept.ipynb": {"memory_growth": True}}}
# How long the FIFO's watchdog waits before it unblocks a reader stuck on the FIFO: only so
# that a server that blocks on it (the bug) fails these tests instead of hanging them.
UNBLOCK_AFTER = 20.0


class FifoWatchdog:
    """Unblocks whoever is stuck opening the FIFO at ``path``, after ``UNBLOCK_AFTER`` seconds,
    and remembers whether anyone was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unblocked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(UNBLOCK_AFTER):
            return
        while not self._stop.wait(0.1):
            try:
                if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                    return
                # Succeeds only while a reader has the FIFO open: that reader was stuck on it.
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(fd)
            self.unblocked = True

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def folder_blocked() -> bool:
    """Whether a file stands where the store's folder should be (parametrize to put it)."""
    return False


@pytest.fixture
def store_path(tmp_path, folder_blocked) -> Path:
    """Where the server's store is."""
    if folder_blocked:
        blocker = tmp_path / "srv"
        blocker.write_text("a file, not a folder")
        return blocker / "tfgpu" / "policies.json"
    return tmp_path / "state" / "policies.json"


@pytest.fixture
def poison():
    """What is at the store path before the server starts (parametrize to set it)."""
    return None


@pytest.fixture
def watchdog(store_path, poison):
    """A watchdog on the store path while the test runs."""
    dog = FifoWatchdog(store_path)
    yield dog
    dog.stop()


@pytest.fixture
def tfgpu_config(store_path, poison, watchdog):
    """The simulated backend, and a store path holding ``poison`` before the server starts."""
    if poison is not None:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    if poison == "deep-nest":
        store_path.write_bytes(DEEP_NEST)
    elif poison == "fifo":
        os.mkfifo(store_path)
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "policy_store_path": str(store_path),
    }


async def call(jp_fetch, method: str, *parts: str, body=None, headers=None):
    """A request under tfgpu/api/; returns (status, decoded JSON)."""
    kwargs = {"method": method, "raise_error": False}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    if headers is not None:
        kwargs["headers"] = headers
    response = await jp_fetch("tfgpu", "api", *parts, **kwargs)
    return response.code, json.loads(response.body) if response.body else None


async def problems(jp_fetch) -> list[dict]:
    """GET policies' problems."""
    code, listed = await call(jp_fetch, "GET", "policies")
    assert code == 200
    return listed["problems"]


async def reported(jp_fetch, text: str) -> dict:
    """Wait for a problem whose error holds ``text`` and return it."""

    async def found():
        return next((p for p in await problems(jp_fetch) if text in p["error"]), None)

    return await poll(found, timeout=30)


@pytest.mark.parametrize("poison", ["deep-nest"])
async def test_a_deep_nest_at_start_is_set_aside_and_the_server_serves(
    jp_fetch, store_path, poison
):
    """A 100,000-deep nest in the store when the server starts: it is loaded, the file is kept
    aside and reported, and policies can be saved."""
    # Given a server started with the nest in its store
    # When its policies are listed and one is written
    listed = await problems(jp_fetch)
    code, _ = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": True})

    # Then the nest was set aside and reported, and the write went through
    [problem] = listed
    assert "RecursionError" in problem["error"]
    assert Path(problem["moved_to"]).read_bytes() == DEEP_NEST
    assert code == 200


async def test_a_deep_nest_written_while_running_is_set_aside(
    jp_fetch, jp_serverapp, jp_root_dir, store_path
):
    """A notebook writes the nest over the store while the server runs: reported, and the REST
    and the kernel channel's policy writes go on."""
    # Given a running server with a notebook, its kernel, and a policy
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    assert (await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": True}))[0] == 200
    session = await start_session(jp_fetch, "nb.ipynb")
    token = await kernel_token(jp_serverapp, session["kernel"]["id"])

    # When the store file is replaced by the nest
    store_path.write_bytes(DEEP_NEST)
    problem = await reported(jp_fetch, "RecursionError")

    # Then it is kept aside, and both kinds of policy write work
    assert Path(problem["moved_to"]).read_bytes() == DEEP_NEST
    rest, _ = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": False})
    kernel, answer = await call(
        jp_fetch, "PUT", "kernel", "policy", body={"devices": []},
        headers=kernel_headers(token),
    )
    assert (rest, kernel) == (200, 200), answer
    assert json.loads(store_path.read_text())["policies"]["nb.ipynb"]["devices"] == []


@pytest.mark.parametrize("poison", ["fifo"])
async def test_a_fifo_at_start_blocks_nothing(jp_fetch, store_path, watchdog, poison):
    """A FIFO at the store path when the server starts: the server listens at once, the FIFO
    is kept aside and reported, and policies can be saved."""
    # Given a server started with a FIFO at its store path (it is listening: this runs)
    # When its policies are listed and one is written
    listed = await problems(jp_fetch)
    code, _ = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": True})

    # Then nobody ever waited on the FIFO; it is kept aside and reported; the write went through
    assert watchdog.unblocked is False
    [problem] = listed
    assert "a FIFO, not a regular file" in problem["error"]
    assert stat.S_ISFIFO(os.stat(problem["moved_to"]).st_mode)
    assert code == 200
    assert json.loads(store_path.read_text())["policies"] == {"nb.ipynb": {"memory_growth": True}}


async def test_a_fifo_while_running_then_the_file_put_back(jp_fetch, store_path, watchdog):
    """The store file is swapped for a FIFO while the server runs, then put back: writes work
    all along, and the file put back is read again."""
    # Given a running server whose store holds a policy
    assert (await call(jp_fetch, "PUT", "policies", "a.ipynb", body={"memory_growth": True}))[0] == 200
    saved = store_path.with_name("saved.json")

    # When the file is moved away and a FIFO put in its place
    os.replace(store_path, saved)
    os.mkfifo(store_path)
    problem = await reported(jp_fetch, "a FIFO, not a regular file")

    # Then the FIFO is kept aside and a write meanwhile works
    assert stat.S_ISFIFO(os.stat(problem["moved_to"]).st_mode)
    code, _ = await call(jp_fetch, "PUT", "policies", "b.ipynb", body={"memory_growth": False})
    assert code == 200

    # When the good file is put back
    saved.write_text(json.dumps(GOOD))
    os.replace(saved, store_path)

    # Then it is read again, and writes go on on top of it
    async def restored():
        code, listed = await call(jp_fetch, "GET", "policies")
        return listed["policies"] == GOOD["policies"]

    await poll(restored, timeout=30)
    code, _ = await call(jp_fetch, "PUT", "policies", "c.ipynb", body={"memory_growth": False})
    assert code == 200
    assert set(json.loads(store_path.read_text())["policies"]) == {"kept.ipynb", "c.ipynb"}
    assert watchdog.unblocked is False


@pytest.mark.parametrize("folder_blocked", [True])
async def test_a_store_folder_that_cannot_be_made_is_reported_at_start(
    jp_fetch, store_path, folder_blocked
):
    """The store's folder cannot be made: the server starts, and says so before any save."""
    # Given a server whose store folder cannot be made (a file is in the way)
    # When its problems are listed, before anything was saved
    listed = await problems(jp_fetch)

    # Then the start found it: the problem names the folder, the user and the fix
    [problem] = listed
    assert problem["file"] == str(store_path)
    assert f"create {store_path.parent}, writable by " in problem["error"]
    # and a save says why it cannot be done
    code, answer = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": True})
    assert code == 503
    assert "cannot be written" in answer["message"]

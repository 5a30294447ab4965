"""The store at server start: its folder is checked and its file read in a worker thread, waited
for a bounded time; reads answer from memory only, and say when the file was not read yet.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from jupyter_tfgpu.policy import PolicyStore, StoreUnavailable
from jupyter_tfgpu.policy import store_file

GOOD = {"version": 1, "policies": {"a.ipynb": {"memory_growth": True}}}


def poll(check, timeout: float = 30.0) -> None:
    """Wait for ``check()`` to hold (a worker thread's work); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met within the time allowed")
        time.sleep(0.02)


class StuckReads:
    """Reads of the store file block until the test lets them go (a stuck file system)."""

    def __init__(self) -> None:
        self.reading = threading.Event()  # set once a read is stuck
        self.go_on = threading.Event()
        self.real = store_file.read_regular

    def __call__(self, *args, **kwargs):
        self.reading.set()
        self.go_on.wait(60)
        return self.real(*args, **kwargs)


@pytest.fixture
def stuck_reads(monkeypatch) -> StuckReads:
    """The store's reads of its file, stuck until ``go_on`` is set."""
    stuck = StuckReads()
    monkeypatch.setattr("jupyter_tfgpu.policy.store.read_regular", stuck)
    yield stuck
    stuck.go_on.set()


def test_reads_answer_from_memory_and_never_touch_the_file(tmp_path):
    """Before its first read a store answers 'nothing' and says it was not read: no disk I/O,
    so a read on the event loop can never block on the file."""
    # Given a store file that is corrupt (a read of it would set it aside)
    path = tmp_path / "policies.json"
    path.write_bytes(b"not json")
    store = PolicyStore(path)

    # When it is read before anything refreshed it
    policies, one = store.all(), store.get("a.ipynb")

    # Then it answered from memory: nothing stored, the file untouched, and it says why
    assert (policies, one) == ({}, None)
    assert path.read_bytes() == b"not json"
    [problem] = store.problems
    assert problem["file"] == str(path) and problem["moved_to"] is None
    assert "not been read yet" in problem["error"]
    # and once it is refreshed, that problem gives way to what the read found
    store.refresh()
    assert [p["moved_to"] for p in store.problems] == [str(next(tmp_path.glob("*.corrupt-*")))]


def test_start_reads_the_file_in_a_worker(tmp_path):
    """start_refreshing reads the file before it returns when the read is quick."""
    # Given a good store file
    path = tmp_path / "policies.json"
    path.write_text(json.dumps(GOOD))
    store = PolicyStore(path)

    # When the store is started
    try:
        read = store.start_refreshing(wait=60)
    finally:
        store.stop_refreshing()

    # Then its policies are in memory and nothing is a problem
    assert read is True
    assert store.all() == GOOD["policies"]
    assert store.problems == []


def test_a_first_read_that_is_stuck_does_not_hold_up_the_start(tmp_path, stuck_reads, caplog):
    """A read that does not finish in time: start goes on, it is reported, the read completes
    in the background and its policies apply from then on."""
    # Given a good store file on a file system where reads are stuck
    path = tmp_path / "policies.json"
    path.write_text(json.dumps(GOOD))
    store = PolicyStore(path, lock_timeout=0.01)

    # When the store is started with a bounded wait
    with caplog.at_level("ERROR"):
        read = store.start_refreshing(wait=0)
    try:
        assert stuck_reads.reading.wait(30)
        # Then start returned without the policies, and said so in the log and in problems
        assert read is False
        assert store.all() == {}
        assert "not been read yet" in store.problems[0]["error"]
        assert any("not read within" in r.getMessage() for r in caplog.records)
        # and a write meanwhile is refused, saying why, rather than waiting on the file
        with pytest.raises(StoreUnavailable) as err:
            store.put("b.ipynb", {"memory_growth": False})
        assert "busy" in err.value.message

        # When the file system comes back
        stuck_reads.go_on.set()

        # Then the read completes, its policies apply, and the problem is gone
        poll(lambda: store.all() == GOOD["policies"], timeout=30)
        assert store.problems == []
    finally:
        store.stop_refreshing()


# -- the store's folder -------------------------------------------------------------------------


def test_a_folder_that_cannot_be_created_is_a_problem_at_start(tmp_path, caplog):
    """The store's folder cannot be made: start says so, naming the folder and the fix."""
    # Given a store path under a regular file, where no folder can be made
    blocker = tmp_path / "srv"
    blocker.write_text("a file, not a folder")
    path = blocker / "tfgpu" / "policies.json"
    store = PolicyStore(path)

    # When the store is started
    with caplog.at_level("ERROR"):
        try:
            store.start_refreshing(wait=60)
        finally:
            store.stop_refreshing()

    # Then the problem names the folder, the user and the fix, in the log and in problems
    folder = str(blocker / "tfgpu")
    [problem] = store.problems
    assert problem["file"] == str(path) and problem["moved_to"] is None
    assert f"create {folder}, writable by " in problem["error"]
    assert any(folder in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    # and once the folder can be made, the next look clears it
    blocker.unlink()
    store.refresh()
    assert store.problems == []


def test_a_folder_that_can_be_created_is_made_and_left_clean(tmp_path):
    """A folder that does not exist yet is made at start, and the check leaves nothing in it."""
    # Given a store path in a folder that does not exist
    path = tmp_path / "srv" / "tfgpu" / "policies.json"
    store = PolicyStore(path)

    # When the store is started
    try:
        store.start_refreshing(wait=60)
    finally:
        store.stop_refreshing()

    # Then the folder exists, holds only the writers' lock file, and nothing is a problem
    assert sorted(p.name for p in path.parent.iterdir()) == ["policies.json.lock"]
    assert store.problems == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder")
def test_a_folder_the_server_user_cannot_write_is_a_problem_at_start(tmp_path):
    """A folder the server's user may not write (made by root for another user, say)."""
    # Given a store folder without write permission
    folder = tmp_path / "srv"
    folder.mkdir()
    folder.chmod(0o555)
    store = PolicyStore(folder / "policies.json")

    # When the store is started
    try:
        store.start_refreshing(wait=60)
    finally:
        store.stop_refreshing()
        folder.chmod(0o755)

    # Then the problem says the folder cannot be written, and how to fix it
    [problem] = store.problems
    assert "PermissionError" in problem["error"]
    assert f"create {folder}, writable by " in problem["error"]

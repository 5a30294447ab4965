"""The policy store on disk: concurrent writers, crashes, corrupt files, renames, path keys."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import stat
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from jupyter_tfgpu.policy import PolicyError, PolicyStore, StoreUnavailable, normalize_notebook_path

# spawn, not fork: a forked child of a test process that ran a server may inherit held locks.
SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 4
THREADS = 3
PUTS = 15


def wait_for(check, timeout: float = 30.0):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail("condition not met within the time allowed")
        time.sleep(0.02)


def read_file(path: Path) -> dict:
    """The store file as JSON (fails the test if it is not valid JSON)."""
    return json.loads(path.read_text(encoding="utf-8"))


def read_store(path: Path) -> PolicyStore:
    """A store on ``path``, read once (as the server reads it at start)."""
    store = PolicyStore(path)
    store.refresh()
    return store


def leftovers(folder: Path, store_file: Path) -> list[str]:
    """Files in the store's folder other than the store and its lock file."""
    expected = {store_file.name, store_file.name + ".lock"}
    return sorted(p.name for p in folder.iterdir() if p.name not in expected)


# -- helpers run in child processes (module level, so spawn can import them) -------------------


def put_many(path: str, worker: int, threads: int, puts: int) -> None:
    """Several threads of one process each put their own keys, many times over."""
    # A generous lock timeout: this is about losing nothing under contention, not giving up.
    store = PolicyStore(path, lock_timeout=300)

    def run(thread: int) -> None:
        for n in range(puts):
            store.put(f"p{worker}/t{thread}/nb{n}.ipynb", {"memory_limit_mb": n + 1})

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def read_raw_until(path: str, stop_file: str, errors_file: str) -> None:
    """Parse the store file straight from disk in a loop; record any read that is not JSON."""
    bad = []
    while not os.path.exists(stop_file):
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        try:
            json.loads(raw)
        except ValueError:
            bad.append(raw[:200].decode("utf-8", "replace"))
    Path(errors_file).write_text(json.dumps(bad))


def put_and_hang_before_rename(path: str, ready_file: str) -> None:
    """Write a policy but stop between the temp file and the rename, until killed."""
    real_replace = os.replace

    def hang(src, dst, *args, **kwargs):
        if os.fspath(dst) != path:
            return real_replace(src, dst, *args, **kwargs)
        Path(ready_file).write_text(os.fspath(src))
        time.sleep(600)

    os.replace = hang
    PolicyStore(path).put("crashed.ipynb", {"memory_limit_mb": 999})


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_processes_and_threads_lose_no_key(tmp_path):
    """Writers in several processes and threads at once: every key is kept, the file stays JSON."""
    # Given one store file, with a policy written before the writers start
    path = tmp_path / "policies.json"
    PolicyStore(path).put("before.ipynb", {"memory_growth": True})
    stop, errors = tmp_path / "stop", tmp_path / "reader-errors.json"
    reader = SPAWN.Process(target=read_raw_until, args=(str(path), str(stop), str(errors)))
    reader.start()

    # When processes (each with threads) and threads of this process put different keys
    workers = [
        SPAWN.Process(target=put_many, args=(str(path), w, THREADS, PUTS)) for w in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    put_many(str(path), PROCESSES, THREADS, PUTS)
    for w in workers:
        w.join(timeout=120)
    stop.touch()
    reader.join(timeout=30)

    # Then every writer exited cleanly and every key is there, in a file that is valid JSON
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    data = read_file(path)
    expected = {"before.ipynb"} | {
        f"p{w}/t{t}/nb{n}.ipynb"
        for w in range(PROCESSES + 1)
        for t in range(THREADS)
        for n in range(PUTS)
    }
    assert set(data["policies"]) == expected
    assert data["policies"]["p0/t0/nb4.ipynb"] == {"memory_limit_mb": 5}
    assert set(read_store(path).all()) == expected
    # and a reader polling the file meanwhile never saw a half-written file
    assert reader.exitcode == 0
    assert json.loads(errors.read_text()) == []
    assert leftovers(tmp_path, path) == ["reader-errors.json", "stop"]


def test_store_instances_see_each_others_writes(tmp_path):
    """Two stores on one file (two server processes): each reads what the other wrote."""
    # Given two stores on the same file
    path = tmp_path / "policies.json"
    first, second = PolicyStore(path), PolicyStore(path)
    assert first.all() == {}

    # When each writes a key
    first.put("a.ipynb", {"memory_growth": True})
    second.put("b.ipynb", {"memory_growth": False})

    # Then both see both once they refreshed, and neither write dropped the other's key
    first.refresh()
    assert first.all() == second.all() == {
        "a.ipynb": {"memory_growth": True},
        "b.ipynb": {"memory_growth": False},
    }
    assert first.get("b.ipynb") == {"memory_growth": False}


# -- crashes ------------------------------------------------------------------------------------


def test_a_writer_killed_before_the_rename_loses_nothing(tmp_path):
    """SIGKILL between the temp file and the rename: the previous content stays whole."""
    # Given a store holding two policies
    path = tmp_path / "policies.json"
    store = PolicyStore(path)
    store.put("a.ipynb", {"memory_growth": True})
    store.put("dir/b.ipynb", {"memory_limit_mb": 2048})
    before = path.read_bytes()

    # When a writer in another process has written its temp file and is killed before the rename
    ready = tmp_path / "ready"
    child = SPAWN.Process(target=put_and_hang_before_rename, args=(str(path), str(ready)))
    child.start()
    try:
        temp = Path(wait_for(lambda: ready.exists() and ready.read_text()))
        assert json.loads(temp.read_text())["policies"]["crashed.ipynb"] == {"memory_limit_mb": 999}
        assert path.read_bytes() == before
        # a writer here waits for the other process's lock meanwhile
        late = threading.Thread(target=store.put, args=("late.ipynb", {"allocator": "default"}))
        late.start()
        time.sleep(0.3)
        assert late.is_alive()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    late.join(timeout=30)

    # Then the killed write never happened, the waiting writer went on, and nothing was lost
    assert child.exitcode == -signal.SIGKILL
    assert not late.is_alive()
    assert read_store(path).all() == {
        "a.ipynb": {"memory_growth": True},
        "dir/b.ipynb": {"memory_limit_mb": 2048},
        "late.ipynb": {"allocator": "default"},
    }
    assert read_file(path)["version"] == 1
    assert store.problems == []


def test_a_failed_write_leaves_the_file_and_no_temp_file(tmp_path, monkeypatch):
    """A rename that fails in this process: old content kept, temp file removed, error raised."""
    # Given a store holding one policy
    path = tmp_path / "policies.json"
    store = PolicyStore(path)
    store.put("a.ipynb", {"memory_growth": True})
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)

    # When a put fails at the rename
    with pytest.raises(OSError):
        store.put("b.ipynb", {"memory_growth": False})
    monkeypatch.undo()

    # Then the file is unchanged, no temp file is left, and the store still works
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []
    store.put("c.ipynb", {"memory_growth": False})
    assert set(store.all()) == {"a.ipynb", "c.ipynb"}


# -- corrupt files ------------------------------------------------------------------------------

CORRUPT = {
    "garbage-bytes": b"\xff\xfe\x00garbage{{{",
    "truncated-json": b'{"version": 1, "policies": {"a.ipynb": {"memory_gro',
    "a-list": b"[]",
    "no-policies": b'{"version": 1}',
    "policies-a-list": b'{"version": 1, "policies": []}',
    "policy-not-an-object": b'{"version": 1, "policies": {"a.ipynb": 3}}',
    "json-null": b"null",
    # Any notebook can write the file: a nest deep enough to exhaust the decoder's recursion,
    "deep-nest": b"[" * 100_000 + b"]" * 100_000,
    # a nest the decoder survives but that no reader or writer of policies should walk,
    "deep-policy": b'{"version": 1, "policies": {"a.ipynb": {"x": ' + b"[" * 500 + b"]" * 500 + b"}}}",
    # and a lone surrogate, which decodes but can never be written back as UTF-8.
    "lone-surrogate": b'{"version": 1, "policies": {"\\ud800.ipynb": {}}}',
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_file_is_moved_aside_and_reported(tmp_path, content):
    """An unreadable file is kept byte for byte beside the store, reported, never overwritten."""
    # Given a store file that is not a policy store
    path = tmp_path / "policies.json"
    path.write_bytes(content)
    store = PolicyStore(path)

    # When the store is read
    store.refresh()
    policies = store.all()

    # Then it starts empty, the file was moved to <name>.corrupt-* intact, and that is reported
    assert policies == {}
    aside = list(tmp_path.glob("policies.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert not path.exists()
    [problem] = store.problems
    assert problem["file"] == str(path)
    assert problem["moved_to"] == str(aside[0])
    assert problem["error"]
    # and the store keeps working, next to the kept file
    store.put("a.ipynb", {"memory_growth": True})
    assert read_file(path)["policies"] == {"a.ipynb": {"memory_growth": True}}
    assert aside[0].read_bytes() == content
    assert len(store.problems) == 1


def test_a_write_over_a_corrupt_file_keeps_the_corrupt_file(tmp_path):
    """A put on a corrupt file moves it aside first: the admin can still repair it."""
    # Given a corrupt store file
    path = tmp_path / "policies.json"
    path.write_bytes(b"not json")
    store = PolicyStore(path)

    # When the first thing done is a write
    store.put("a.ipynb", {"memory_limit_mb": 10})

    # Then the corrupt bytes are kept aside and the new file holds the write
    [aside] = tmp_path.glob("policies.json.corrupt-*")
    assert aside.read_bytes() == b"not json"
    assert read_file(path)["policies"] == {"a.ipynb": {"memory_limit_mb": 10}}
    assert [p["moved_to"] for p in store.problems] == [str(aside)]


def test_corrupt_files_in_the_same_second_do_not_overwrite_each_other(tmp_path):
    """Two corrupt files set aside one after the other are both kept."""
    # Given a store whose file is corrupted twice in quick succession
    path = tmp_path / "policies.json"
    store = PolicyStore(path)
    path.write_bytes(b"first garbage")
    store.refresh()
    path.write_bytes(b"second garbage, longer")

    # When it is read again
    store.refresh()

    # Then both are kept, each with its own bytes
    kept = {p.read_bytes() for p in tmp_path.glob("policies.json.corrupt-*")}
    assert kept == {b"first garbage", b"second garbage, longer"}
    assert len(store.problems) == 2


# -- renames and deletes ------------------------------------------------------------------------


@pytest.fixture
def filled_store(tmp_path) -> PolicyStore:
    """A store with notebooks at the root, in a folder, in a subfolder and in look-alike names."""
    store = PolicyStore(tmp_path / "policies.json")
    for n, key in enumerate(
        ["nb.ipynb", "dir/a.ipynb", "dir/sub/b.ipynb", "dir2/c.ipynb", "dir.ipynb", "other.ipynb"]
    ):
        store.put(key, {"memory_limit_mb": n + 1})
    return store


def test_renaming_a_notebook_moves_its_policy(filled_store):
    """A renamed notebook keeps its policy under the new name."""
    # Given / When
    moved = filled_store.rename("nb.ipynb", "renamed.ipynb")

    # Then
    policies = filled_store.all()
    assert moved == 1
    assert "nb.ipynb" not in policies
    assert policies["renamed.ipynb"] == {"memory_limit_mb": 1}
    assert len(policies) == 6


def test_renaming_a_folder_moves_every_policy_under_it(filled_store):
    """A renamed folder moves its notebooks' policies, and nothing with a look-alike name."""
    # Given / When
    moved = filled_store.rename("dir", "moved/dir")

    # Then
    policies = filled_store.all()
    assert moved == 2
    assert policies["moved/dir/a.ipynb"] == {"memory_limit_mb": 2}
    assert policies["moved/dir/sub/b.ipynb"] == {"memory_limit_mb": 3}
    assert not any(k.startswith("dir/") for k in policies)
    assert policies["dir2/c.ipynb"] == {"memory_limit_mb": 4}
    assert policies["dir.ipynb"] == {"memory_limit_mb": 5}
    # and the file on disk says the same
    assert read_file(filled_store.path)["policies"] == policies


def test_renaming_something_without_a_policy_changes_nothing(filled_store):
    """A rename of a file no policy refers to moves nothing."""
    # Given
    before = filled_store.all()

    # When
    moved = filled_store.rename("untracked.ipynb", "elsewhere.ipynb")

    # Then
    assert moved == 0
    assert filled_store.all() == before


def test_deleting_a_notebook_removes_its_policy(filled_store):
    """A deleted notebook's policy goes with it."""
    # Given / When
    gone = filled_store.delete_tree("dir/a.ipynb")

    # Then
    policies = filled_store.all()
    assert gone == 1
    assert "dir/a.ipynb" not in policies
    assert "dir/sub/b.ipynb" in policies


def test_deleting_a_folder_removes_every_policy_under_it(filled_store):
    """A deleted folder takes its notebooks' policies, and nothing with a look-alike name."""
    # Given / When
    gone = filled_store.delete_tree("dir")

    # Then
    assert gone == 2
    assert set(filled_store.all()) == {"nb.ipynb", "dir2/c.ipynb", "dir.ipynb", "other.ipynb"}


def test_delete_of_one_policy_says_whether_there_was_one(filled_store):
    """delete() removes one key and reports False for a key it never had."""
    # Given / When
    first, second = filled_store.delete("other.ipynb"), filled_store.delete("other.ipynb")

    # Then
    assert (first, second) == (True, False)
    assert filled_store.get("other.ipynb") is None


def test_a_change_that_changes_nothing_does_not_rewrite_the_file(filled_store):
    """Removing a policy that is not there, or storing the same one again, leaves the file as it
    is (no rewrite, no fsync) and tells no view of a change; a real change still writes."""
    # Given the store's file as it is, and a listener for changes
    changes: list[set[str]] = []
    filled_store.on_change = changes.append
    before = os.stat(filled_store.path)
    # When nothing is changed, twice
    assert filled_store.delete("never-had-one.ipynb") is False
    filled_store.put("other.ipynb", filled_store.get("other.ipynb"))
    # Then the file is the same file, and no change was announced
    after = os.stat(filled_store.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert changes == []
    # And a real change still rewrites it
    filled_store.put("other.ipynb", {"memory_limit_mb": 99})
    assert os.stat(filled_store.path).st_ino != before.st_ino
    assert changes == [{"other.ipynb"}]


# -- notebook path keys -------------------------------------------------------------------------


BAD_PATHS = {
    "dotdot": "../x.ipynb",
    "nested-dotdot": "a/../../x.ipynb",
    "inner-dotdot": "a/../x.ipynb",
    "bare-dotdot": "..",
    "empty": "",
    "root": "/",
    "double-slash": "//",
    "dot": ".",
    "dot-slash": "./.",
    "nul": "a/\x00b.ipynb",
    "none": None,
    # A name that is not UTF-8 on disk reaches Python with lone surrogates: no key can hold it.
    "undecodable": os.fsdecode(b"a/\xff.ipynb"),
}


@pytest.mark.parametrize("path", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_bad_notebook_paths_are_refused(path):
    """Paths that leave the root, name nothing, hold NUL or cannot be stored: PolicyError."""
    # Given / When
    with pytest.raises(PolicyError) as err:
        normalize_notebook_path(path)

    # Then
    assert err.value.field == "path"


@pytest.mark.parametrize(
    "path,key",
    [
        ("nb.ipynb", "nb.ipynb"),
        ("/dir//sub/./nb.ipynb/", "dir/sub/nb.ipynb"),
        ("données/日本語 ノート.ipynb", "données/日本語 ノート.ipynb"),
        ("..hidden/x..y.ipynb", "..hidden/x..y.ipynb"),
        # On POSIX a backslash is a character of a file's name, not a separator.
        ("dir\\sub\\nb.ipynb", "dir\\sub\\nb.ipynb"),
        ("..\\x.ipynb", "..\\x.ipynb"),
    ],
)
def test_notebook_paths_are_normalized(path, key):
    """Leading, doubled and trailing slashes and '.' name the same file: one key."""
    # Given / When / Then
    assert normalize_notebook_path(path, sep="/") == key


@pytest.mark.parametrize(
    "path,key",
    [("dir\\sub\\nb.ipynb", "dir/sub/nb.ipynb"), ("dir/sub\\.\\nb.ipynb", "dir/sub/nb.ipynb")],
)
def test_on_windows_a_backslash_separates(path, key):
    """Where the OS separates with a backslash, it is one file either way: one key."""
    # Given / When / Then
    assert normalize_notebook_path(path, sep="\\") == key
    with pytest.raises(PolicyError):
        normalize_notebook_path("..\\x.ipynb", sep="\\")


SAME_LOOKING = {
    # Two files on a POSIX file system, which keeps a name's bytes as given.
    "backslash-or-slash": ("d\\n.ipynb", "d/n.ipynb"),
    "composed-or-decomposed": (
        unicodedata.normalize("NFC", "café/résumé.ipynb"),
        unicodedata.normalize("NFD", "café/résumé.ipynb"),
    ),
}


@pytest.mark.parametrize("first,second", SAME_LOOKING.values(), ids=SAME_LOOKING.keys())
def test_paths_of_two_files_are_two_keys(tmp_path, first, second):
    """Names that look alike but are two files keep two policies, each under its own name."""
    # Given two spellings that are two files
    assert first != second
    keys = [normalize_notebook_path(first, sep="/"), normalize_notebook_path(second, sep="/")]

    # When a policy is stored under the first
    store = PolicyStore(tmp_path / "policies.json")
    store.put(keys[0], {"memory_growth": True})

    # Then the second has none, and the key on disk is the first, as it was spelled
    assert keys == [first, second]
    assert store.get(keys[1]) is None
    assert list(read_file(store.path)["policies"]) == [first]


# -- the file itself ----------------------------------------------------------------------------


def test_writes_are_atomic_and_leave_nothing_behind(tmp_path):
    """After many writes: one complete JSON file, no temp files, not writable by others."""
    # Given a store in a folder that does not exist yet
    path = tmp_path / "state" / "tfgpu" / "policies.json"
    store = PolicyStore(path)

    # When it is written many times
    for n in range(20):
        store.put(f"nb{n}.ipynb", {"memory_limit_mb": n + 1, "devices": []})
    store.delete("nb0.ipynb")

    # Then the folder holds the store and its lock file only
    assert leftovers(path.parent, path) == []
    data = read_file(path)
    assert data["version"] == 1
    assert len(data["policies"]) == 19
    assert path.read_text(encoding="utf-8").endswith("}\n")
    # and the file is the owner's: readable and writable by them, writable by nobody else
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_non_ascii_keys_are_stored_as_text(tmp_path):
    """Non-ASCII notebook names are readable in the file, not \\u escapes."""
    # Given / When
    store = PolicyStore(tmp_path / "policies.json")
    store.put("ノート.ipynb", {"memory_growth": True})

    # Then
    assert "ノート.ipynb" in store.path.read_text(encoding="utf-8")
    assert store.get("ノート.ipynb") == {"memory_growth": True}


def test_a_missing_file_is_an_empty_store(tmp_path):
    """No file yet: no policies, no problems, nothing created by reading."""
    # Given
    store = PolicyStore(tmp_path / "nowhere" / "policies.json")

    # When
    store.refresh()
    policies, one = store.all(), store.get("nb.ipynb")

    # Then
    assert (policies, one, store.problems) == ({}, None, [])
    assert not (tmp_path / "nowhere").exists()


# -- another process holding the lock, slow writes ----------------------------------------------


class FakeClock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the clock instead of waiting."""
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def held_lock(tmp_path):
    """The store's lock file, held by another open file (as another process would hold it)."""
    import fcntl

    path = tmp_path / "policies.json"
    with open(path.with_name("policies.json.lock"), "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        yield path
        fcntl.flock(other, fcntl.LOCK_UN)


def test_a_writer_gives_up_on_a_held_lock_and_says_why(held_lock):
    """Another process holds the lock: the write fails with StoreUnavailable after the timeout."""
    # Given a store with a 3 s lock timeout on a clock that only moves when it sleeps
    clock = FakeClock()
    store = PolicyStore(held_lock, lock_timeout=3.0, clock=clock, sleep=clock.sleep)

    # When a policy is written while another process holds the lock
    with pytest.raises(StoreUnavailable) as err:
        store.put("nb.ipynb", {"memory_growth": True})

    # Then it waited for the timeout on the clock, said why, and wrote nothing
    assert 3.0 <= sum(clock.slept) < 3.1
    assert "locked by another process" in err.value.message
    assert str(held_lock.with_name("policies.json.lock")) in err.value.message
    assert not held_lock.exists()
    assert store.get("nb.ipynb") is None


def test_readers_never_wait_for_a_writer(tmp_path):
    """While a writer waits for the lock (or for a slow fsync), reads answer from memory."""
    # Given a store holding a policy, and a writer stuck waiting for another process's lock
    import fcntl

    path = tmp_path / "policies.json"
    PolicyStore(path).put("a.ipynb", {"memory_growth": True})
    waiting, go_on = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        waiting.set()
        go_on.wait(60)

    store = PolicyStore(path, sleep=sleep)
    store.refresh()
    other = open(store.lock_path, "a+")
    fcntl.flock(other, fcntl.LOCK_EX)
    writer = threading.Thread(target=store.put, args=("b.ipynb", {"memory_growth": False}))
    writer.start()
    try:
        assert waiting.wait(60)

        # When the store is read and refreshed meanwhile
        policies, one, refreshed = store.all(), store.get("a.ipynb"), store.refresh()

        # Then reads answer at once, from memory; refresh leaves the file to the writer
        assert policies == {"a.ipynb": {"memory_growth": True}}
        assert one == {"memory_growth": True}
        assert refreshed is False
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        other.close()
        go_on.set()
        writer.join(60)
    # and once the lock is free the write goes through and is what readers see
    assert set(store.all()) == {"a.ipynb", "b.ipynb"}


def test_refresh_picks_up_another_process_write(tmp_path):
    """A second server's write reaches this one's memory at its next refresh."""
    # Given two stores on one file, the first read before the second writes
    path = tmp_path / "policies.json"
    first, second = PolicyStore(path), PolicyStore(path)
    assert first.all() == {}
    second.put("b.ipynb", {"memory_growth": False})

    # When the first refreshes
    assert first.refresh() is True

    # Then it sees the write
    assert first.get("b.ipynb") == {"memory_growth": False}


# -- a store that cannot be read ----------------------------------------------------------------


def test_a_store_path_that_is_a_folder_is_reported_and_refuses_writes(tmp_path):
    """The path is a folder: reads are empty, the problem is reported, writes say why."""
    # Given a store path that is a folder
    path = tmp_path / "policies.json"
    path.mkdir()
    store = PolicyStore(path)

    # When it is read and then written
    assert store.refresh() is True
    policies = store.all()
    with pytest.raises(StoreUnavailable) as err:
        store.put("nb.ipynb", {"memory_growth": True})

    # Then it is empty, the problem says why, the write says why, and the folder is untouched
    assert policies == {}
    [problem] = store.problems
    assert problem["file"] == str(path)
    assert problem["moved_to"] is None
    assert "IsADirectoryError" in problem["error"]
    assert store.unavailable == problem["error"]
    assert "IsADirectoryError" in err.value.message
    assert path.is_dir() and list(path.iterdir()) == []
    # and once it is a file again, the problem goes away
    path.rmdir()
    store.refresh()
    assert store.problems == [] and store.unavailable is None


def test_an_unreadable_store_is_logged_once(tmp_path, caplog):
    """Refreshed every few seconds, an unreadable store is still said once."""
    # Given
    path = tmp_path / "policies.json"
    path.mkdir()
    store = PolicyStore(path)

    # When
    with caplog.at_level("ERROR"):
        for _ in range(5):
            store.refresh()

    # Then
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 1


# -- corrupt files and concurrent readers -------------------------------------------------------


def test_setting_aside_a_file_another_process_moved_first_is_no_error(tmp_path, monkeypatch):
    """Two servers read one corrupt file: the one that finds it gone starts empty, no error."""
    # Given a corrupt store file that another process moves aside just before this one does
    path = tmp_path / "policies.json"
    path.write_bytes(b"not json")
    real_replace = os.replace

    def moved_first(src, dst):
        if os.fspath(src) == str(path):
            real_replace(src, tmp_path / "taken-by-the-other-server")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", moved_first)
    store = PolicyStore(path)

    # When it is read
    store.refresh()
    monkeypatch.undo()

    # Then it starts empty, and nothing is reported twice or lost
    assert store.all() == {}
    assert store.problems == []
    assert (tmp_path / "taken-by-the-other-server").read_bytes() == b"not json"


def test_a_corrupt_file_is_set_aside_under_the_writers_lock(tmp_path):
    """A refresh that finds a corrupt file while another process holds the lock moves nothing:
    that process may be replacing it with a good file right now."""
    # Given a corrupt file, and the lock held elsewhere
    import fcntl

    path = tmp_path / "policies.json"
    path.write_bytes(b"not json")
    clock = FakeClock()
    store = PolicyStore(path, lock_timeout=1.0, clock=clock, sleep=clock.sleep)
    other = open(store.lock_path, "a+")
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        # When the store is refreshed
        store.refresh()
        # Then nothing is moved, and the reason is reported
        assert path.read_bytes() == b"not json"
        assert "locked by another process" in store.unavailable
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        other.close()
    # and the next refresh, with the lock free, sets it aside
    store.refresh()
    assert [p["moved_to"] for p in store.problems] == [str(next(tmp_path.glob("*.corrupt-*")))]

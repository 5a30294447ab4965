"""Whatever a notebook puts at the store path (it sits in the user's data folder): a FIFO, a
device, a huge file, JSON built to break the decoder. Nothing blocks, nothing raises but a
reported problem, and the store goes on working.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from jupyter_tfgpu.policy import PolicyStore, StoreUnavailable
from jupyter_tfgpu.policy.store_file import MAX_STORE_BYTES, CorruptStore, decode

GOOD = {"version": 1, "policies": {"a.ipynb": {"memory_growth": True, "devices": [0, "GPU-1"]}}}


def in_a_thread(call, timeout: float = 30.0):
    """Run ``call`` in a daemon thread and return its result; fail the test if it blocks.

    A store that blocks on the file (the bug) fails the test instead of hanging it.
    """
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test below
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{call} was still blocked after {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def unblock_fifo(path: Path) -> None:
    """Give a reader stuck opening the FIFO an end of file (cleans up after the bug)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # nobody is waiting on it
    os.close(fd)


@pytest.fixture
def fifo(tmp_path):
    """A FIFO at the store path, with nobody writing to it."""
    path = tmp_path / "policies.json"
    os.mkfifo(path)
    yield path
    for leftover in [path, *tmp_path.glob("policies.json.corrupt-*")]:
        if leftover.exists():
            unblock_fifo(leftover)


# -- decoding any bytes -------------------------------------------------------------------------


def mutations(seed: int, count: int) -> list[bytes]:
    """``count`` damaged copies of a good store file: bytes flipped, cut, repeated, nested."""
    rng = random.Random(seed)
    good = json.dumps(GOOD).encode()
    made = []
    for _ in range(count):
        raw = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            kind, at = rng.randrange(5), rng.randrange(len(raw))
            if kind == 0:
                raw[at] = rng.randrange(256)
            elif kind == 1:
                del raw[at:]
            elif kind == 2:
                raw[at:at] = raw[at : at + rng.randint(1, 20)] * rng.randint(1, 50)
            elif kind == 3:
                depth = rng.choice([10, 1_000, 50_000])
                raw[at:at] = b"[" * depth + b"]" * depth
            else:
                raw[at:at] = rng.choice([b"NaN", b"1e999", b'"\\udc80"', b"\\", b"\x00", b"{}"])
            if not raw:
                break
        made.append(bytes(raw))
    return made


def test_decoding_any_bytes_gives_policies_or_a_corrupt_store():
    """Damaged files of every kind: the decoder returns policies or raises CorruptStore, only."""
    # Given many damaged copies of a good file, and a few made by hand
    samples = [
        *mutations(seed=22, count=2_000),
        b"[" * 100_000,
        b"{" * 100_000,
        b'{"policies": ' * 50_000,
        b'{"version": 1, "policies": {"a": ' + b"[" * 2_000 + b"]" * 2_000 + b"}}",
        b"9" * 10_000,
    ]

    # When each is decoded / Then only those two outcomes are seen
    for raw in samples:
        try:
            policies = decode(raw)
        except CorruptStore:
            continue
        assert isinstance(policies, dict)
        # and whatever decodes can be written back as it was read
        json.dumps(policies, ensure_ascii=False).encode("utf-8")


# -- what is not a regular file -----------------------------------------------------------------


def test_a_fifo_at_the_store_path_is_set_aside_without_blocking(fifo):
    """A FIFO nobody writes to: the read returns at once, the FIFO is kept aside, reported."""
    # Given a store whose path is a FIFO
    store = PolicyStore(fifo)

    # When it is refreshed (as the server's thread does)
    refreshed = in_a_thread(store.refresh)

    # Then it did not block: the FIFO is moved aside and reported, and the store is empty
    assert refreshed is True
    [aside] = fifo.parent.glob("policies.json.corrupt-*")
    assert aside.is_fifo()
    [problem] = store.problems
    assert problem["moved_to"] == str(aside)
    assert "a FIFO, not a regular file" in problem["error"]
    assert store.all() == {}
    # and writes go on
    in_a_thread(lambda: store.put("nb.ipynb", {"memory_growth": True}))
    assert json.loads(fifo.read_text())["policies"] == {"nb.ipynb": {"memory_growth": True}}


def test_a_write_over_a_fifo_does_not_block(fifo):
    """A write that finds a FIFO where the file was sets it aside and writes."""
    # Given a store whose path is a FIFO, never read yet
    store = PolicyStore(fifo)

    # When a policy is written
    in_a_thread(lambda: store.put("nb.ipynb", {"memory_growth": False}))

    # Then it is written, and the FIFO is kept aside
    assert json.loads(fifo.read_text())["policies"] == {"nb.ipynb": {"memory_growth": False}}
    assert [p.is_fifo() for p in fifo.parent.glob("policies.json.corrupt-*")] == [True]


def test_a_good_file_put_back_after_a_fifo_is_read_again(fifo):
    """The admin restores the store file where a FIFO was: the next refresh reads it."""
    # Given a store that found a FIFO and set it aside
    store = PolicyStore(fifo)
    in_a_thread(store.refresh)

    # When the good file is put back
    fifo.write_text(json.dumps(GOOD))
    in_a_thread(store.refresh)

    # Then its policies are read, and writes keep them
    assert store.all() == GOOD["policies"]
    in_a_thread(lambda: store.put("b.ipynb", {"memory_growth": False}))
    assert set(store.all()) == {"a.ipynb", "b.ipynb"}


def test_a_device_at_the_store_path_is_set_aside_unopened(tmp_path):
    """A link to a device (here /dev/null): it is not read, it is set aside and reported."""
    # Given a store path that is a link to a character device
    path = tmp_path / "policies.json"
    path.symlink_to("/dev/null")
    store = PolicyStore(path)

    # When it is refreshed
    in_a_thread(store.refresh)

    # Then the link was moved aside (the device is untouched) and the problem says what it was
    [aside] = tmp_path.glob("policies.json.corrupt-*")
    assert aside.is_symlink() and os.readlink(aside) == "/dev/null"
    [problem] = store.problems
    assert "a character device, not a regular file" in problem["error"]


def test_a_file_larger_than_the_bound_is_set_aside(tmp_path):
    """A file over 16 MiB (no store of policies comes near it) is kept aside, not decoded."""
    # Given a store file one byte over the bound (sparse: nothing is written to the disk)
    path = tmp_path / "policies.json"
    with open(path, "wb") as big:
        big.truncate(MAX_STORE_BYTES + 1)
    store = PolicyStore(path)

    # When it is refreshed
    in_a_thread(store.refresh)

    # Then it is set aside whole and the problem says why
    [aside] = tmp_path.glob("policies.json.corrupt-*")
    assert aside.stat().st_size == MAX_STORE_BYTES + 1
    [problem] = store.problems
    assert f"larger than the {MAX_STORE_BYTES} bytes" in problem["error"]
    assert store.all() == {}


def test_a_write_that_would_pass_the_bound_is_refused(tmp_path):
    """A put that would make the file larger than the bound is a 503 that says why."""
    # Given a store bounded to 200 bytes, holding one policy
    path = tmp_path / "policies.json"
    store = PolicyStore(path, max_bytes=200)
    store.put("a.ipynb", {"memory_growth": True})
    before = path.read_bytes()

    # When a policy is added that would take it past the bound
    with pytest.raises(StoreUnavailable) as err:
        store.put("b" * 200 + ".ipynb", {"memory_growth": True})

    # Then nothing is written and the reason names the bound
    assert "more than the 200 bytes" in err.value.message
    assert path.read_bytes() == before
    assert set(store.all()) == {"a.ipynb"}

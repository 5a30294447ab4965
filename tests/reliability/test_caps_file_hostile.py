"""Whatever stands at the caps file's path, reading it answers at once with the reason it is not
used: it never blocks, never reads without bound, never raises, and keeps the caps in force.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from jupyter_tfgpu.server.caps_file import MAX_CAPS_FILE_BYTES, read_caps_file, read_within
from jupyter_tfgpu.server.caps_watcher import CapsFile
from jupyter_tfgpu.server.config import TFGPU

SERVER_UID = 4243 if os.geteuid() == 0 else os.geteuid() + 1
ANSWERS_WITHIN = 30  # seconds: far more than any answer takes; a read that blocks fails here


@pytest.fixture
def folder(tmp_path) -> Path:
    made = tmp_path / "etc"
    made.mkdir(mode=0o755)
    return made


def read_in_a_thread(path: Path):
    """The read, or a failure if it does not answer (a FIFO would block a plain open)."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(read_caps_file(str(path), SERVER_UID)), daemon=True)
    thread.start()
    thread.join(ANSWERS_WITHIN)
    assert answers, "the read of the caps file blocked"
    return answers[0]


def test_a_fifo_is_refused_without_waiting_for_a_writer(folder):
    path = folder / "caps.json"
    os.mkfifo(path, 0o644)
    read = read_in_a_thread(path)
    assert read.values is None and "is a FIFO, not a regular file" in read.problems[0].message


def test_a_link_to_a_device_is_refused_unread(folder):
    path = folder / "caps.json"
    path.symlink_to("/dev/zero")
    read = read_in_a_thread(path)
    assert read.values is None and "is a character device, not a regular file" in read.problems[0].message


def test_a_folder_at_the_path_is_refused(folder):
    (folder / "caps.json").mkdir(mode=0o755)
    read = read_in_a_thread(folder / "caps.json")
    assert read.values is None and "cannot be read" in read.problems[0].message


def test_a_huge_file_is_refused_unread(folder):
    path = folder / "caps.json"
    with open(path, "wb") as out:
        out.truncate(MAX_CAPS_FILE_BYTES * 1024)  # sparse: 64 MiB that take no disk
    path.chmod(0o644)
    read = read_in_a_thread(path)
    assert read.values is None
    assert f"larger than the {MAX_CAPS_FILE_BYTES} bytes a caps file may hold" in read.problems[0].message


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than the decoder's recursion
        '{"default_policy": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
        '{"allowed_devices": [' + ", ".join(["0"] * 5000) + "]}",
        '{"max_memory_mb": 1e999}',
        '{"max_memory_mb": "\\ud800"}',
    ],
    ids=["deep list", "deep policy", "long list", "infinity", "lone surrogate"],
)
def test_odd_json_is_a_problem_not_a_crash(folder, content):
    path = folder / "caps.json"
    path.write_text(content)
    path.chmod(0o644)
    read = read_in_a_thread(path)
    if read.values is not None:  # a long list of GPU 0 is a valid (if odd) list
        assert read.values == {"allowed_devices": [0] * 5000}
    else:
        assert read.problems and all(p.file == str(path) for p in read.problems)


def test_a_read_that_does_not_answer_is_a_problem_at_start(folder):
    """At start the server waits a bounded time: a hung file system neither hangs the server nor
    lets it start without the caps."""
    hung = threading.Event()
    read = read_within(lambda: hung.wait(60), str(folder / "caps.json"), seconds=0.1)
    hung.set()
    assert read.values is None and "no answer within 0.1 s" in read.problems[0].message


def test_a_watcher_whose_look_fails_keeps_watching_and_the_caps(folder, caplog):
    # Given a watched, valid caps file
    path = folder / "caps.json"
    path.write_text(json.dumps({"max_memory_mb": 1024}))
    path.chmod(0o644)
    looks = []

    def stat(name):
        looks.append(name)
        if len(looks) > 40:
            raise RuntimeError("injected: stat failed")
        return os.stat(name)

    settings = TFGPU()
    base = {name: getattr(settings, name) for name in settings.trait_names(config=True)}
    caps = CapsFile(str(path), base, log=logging.getLogger("caps-hostile"), uid=SERVER_UID, stat=stat)
    caps.at_start(caps.read())
    delivered = []
    # When its looks start failing
    with caplog.at_level(logging.ERROR, logger="caps-hostile"):
        caps.start_watching(delivered.append, interval=0.001)
        try:
            for _ in range(2000):
                if len(looks) > 200:
                    break
                threading.Event().wait(0.005)
        finally:
            caps.stop_watching(wait=5)
    # Then it kept looking, said so once, delivered nothing, and the caps are as they were
    assert len(looks) > 200
    assert len([r for r in caplog.records if "looking at the caps file" in r.getMessage()]) == 1
    assert delivered == [] and caps.values["max_memory_mb"] == 1024

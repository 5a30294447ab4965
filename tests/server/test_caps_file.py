"""The caps file: what it may hold, who may own it, and how a change is read and put in force.

No server here (``test_caps_reload.py`` and ``test_caps_file_start.py`` run real ones): the
reader on real files in a throw-away folder, the watcher with its stat and clock injected.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from jupyter_tfgpu.policy import AdminPolicy
from jupyter_tfgpu.policy.changes import PolicyChanges
from jupyter_tfgpu.server.caps_file import (
    CAPS_FILE_SETTINGS,
    parse_caps,
    read_caps_file,
    why_unsafe,
)
from jupyter_tfgpu.server.caps_watcher import CapsFile
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.kernels.enforcement import Enforcer, KernelFacts, Rules

MiB = 2**20
ROOT = os.geteuid() == 0
# The server's user in these tests: one that owns none of the files made here.
SERVER_UID = 4243 if ROOT else os.geteuid() + 1


def defaults() -> dict:
    settings = TFGPU()
    return {name: getattr(settings, name) for name in settings.trait_names(config=True)}


def write(path: Path, data, mode: int = 0o644) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder only its owner can write, as /etc/jupyter is."""
    made = tmp_path / "etc"
    made.mkdir(mode=0o755)
    return made


# -- what it may hold ------------------------------------------------------------------------------


def test_the_file_holds_the_caps_and_the_rules_and_the_help_names_them():
    """Every cap (AdminPolicy) and every enforcement rule (Rules) may be in it, nothing else, and
    the setting's help (the manual) names exactly those."""
    # Given the settings the services put in force while the server runs
    caps = list(AdminPolicy.settings())
    rules = [f.metadata.get("setting", f.name) for f in fields(Rules)]
    # Then the caps file holds those
    assert list(CAPS_FILE_SETTINGS) == caps + rules
    # And the help of TFGPU.caps_file lists those settings and no other
    help_text = " ".join(inspect.cleandoc(TFGPU.class_traits()["caps_file"].help).split())
    named = {name for name in TFGPU.class_traits(config=True) if f" {name}," in help_text or f" {name}." in help_text}
    assert named == set(CAPS_FILE_SETTINGS)


def test_a_valid_file_gives_its_values_as_the_traits_hold_them(folder):
    # Given an admin's caps file
    path = write(folder / "caps.json", {"max_memory_mb": 20480, "enforcement": "restart",
                                        "default_policy": {"memory_growth": True, "gpu_count": 1.0}})
    # When it is read
    read = read_caps_file(str(path), SERVER_UID, clock=lambda: 1234.5)
    # Then its values are the settings' values, validated (2.0 as the int the trait keeps)
    assert read.problems == []
    assert read.values == {"max_memory_mb": 20480, "enforcement": "restart",
                           "default_policy": {"memory_growth": True, "gpu_count": 1}}
    assert type(read.values["default_policy"]["gpu_count"]) is int
    assert read.read_at == 1234.5


@pytest.mark.parametrize(
    "content, setting, said",
    [
        ('{"max_memory_mb": 20480,}', None, "not a JSON object of TFGPU settings"),
        ("[1, 2]", None, "expected a JSON object"),
        ('{"max_memory": 20480}', "TFGPU.max_memory", "did you mean TFGPU.max_memory_mb?"),
        ('{"max_memory_mb": "lots"}', "TFGPU.max_memory_mb", "expected an int"),
        ('{"max_memory_mb": 0}', "TFGPU.max_memory_mb", "0"),
        ('{"enforcement": "kill"}', "TFGPU.enforcement", "'kill'"),
        ('{"enforcement_grace": NaN}', "TFGPU.enforcement_grace", "NaN"),
        ('{"default_policy": {"memory_growth": "yes"}}', "TFGPU.default_policy", "memory_growth"),
        ('{"backend": "nvml"}', "TFGPU.backend", "takes effect only when the server starts"),
        ('{"sample_interval": 2}', "TFGPU.sample_interval", "takes effect only when the server starts"),
        ('{"caps_file": "/tmp/other.json"}', "TFGPU.caps_file", "takes effect only when the server starts"),
        ('{"hard_caps": "mps"}', "TFGPU.hard_caps", "the driver mechanism (an MPS daemon"),
        ('{"max_memory_mb": 1, "max_memory_mb": 2}', None, "max_memory_mb given more than once"),
        ("\xff", None, "not a JSON object"),
    ],
)
def test_a_file_with_a_problem_is_not_used_and_says_why(content, setting, said, folder):
    # Given a caps file with one problem among good settings
    path = folder / "caps.json"
    path.write_bytes(content.encode("latin-1") if content == "\xff" else content.encode())
    # When it is read
    read = read_caps_file(str(path), SERVER_UID)
    # Then none of it is used, and the problem names the setting (or the file) and why
    assert read.values is None
    assert [(p.setting, p.file) for p in read.problems] == [(setting, str(path))]
    assert said in read.problems[0].message


def test_a_missing_file_is_a_problem(folder):
    read = read_caps_file(str(folder / "caps.json"), SERVER_UID)
    assert read.values is None and read.problems[0].message == "there is no such file"


def test_parse_names_every_problem_of_the_file_at_once():
    values, problems = parse_caps(b'{"backend": "nvml", "max_memory_mb": -1, "idle_action": "nap"}', "/f")
    assert values is None
    assert [p.setting for p in problems] == ["TFGPU.backend", "TFGPU.max_memory_mb", "TFGPU.idle_action"]


# -- who may change it ----------------------------------------------------------------------------


def owned_by_the_server(path: Path) -> int:
    """Make ``path`` the server's (as root: chown it) and return the server's uid."""
    if ROOT:
        os.chown(path, SERVER_UID, SERVER_UID, follow_symlinks=False)
        return SERVER_UID
    return os.geteuid()


def test_a_safe_file_is_safe(folder):
    path = write(folder / "caps.json", {})
    assert why_unsafe(str(path), SERVER_UID) is None


@pytest.mark.parametrize("mode, said", [(0o664, "mode 0664"), (0o646, "mode 0646")])
def test_a_file_others_can_write_is_refused(folder, mode, said):
    path = write(folder / "caps.json", {"max_memory_mb": 1}, mode)
    read = read_caps_file(str(path), SERVER_UID)
    assert read.values is None
    message = read.problems[0].message
    assert message.startswith("not used: the file can be written by its group or by anyone")
    assert said in message and f"chmod go-w {path}" in message


def test_a_file_of_the_servers_user_is_refused(folder):
    path = write(folder / "caps.json", {"max_memory_mb": 1})
    uid = owned_by_the_server(path)
    read = read_caps_file(str(path), uid)
    assert read.values is None
    assert "the file belongs to" in read.problems[0].message
    assert "the user the server and every notebook run as" in read.problems[0].message


def test_a_folder_of_the_servers_user_is_refused(folder):
    # Given a safe file in a folder the server's user owns (it could rename another file there)
    path = write(folder / "caps.json", {})
    uid = owned_by_the_server(folder)
    if ROOT:
        os.chown(path, 0, 0)
    # Then the file is refused, naming the folder
    reason = why_unsafe(str(path), uid)
    assert reason and reason.startswith(f"its folder {folder} belongs to")


def test_a_folder_others_can_write_is_refused_unless_sticky(folder):
    path = write(folder / "caps.json", {})
    folder.chmod(0o777)
    assert f"its folder {folder} can be written" in why_unsafe(str(path), SERVER_UID)
    folder.chmod(0o1777)  # like /tmp: only an entry's owner may rename or remove it
    assert why_unsafe(str(path), SERVER_UID) is None


def test_a_symbolic_link_of_the_servers_user_is_refused(folder, tmp_path):
    # Given the admin's file reached through a link the server's user could point elsewhere
    target = write(folder / "real.json", {})
    link = folder / "caps.json"
    link.symlink_to(target)
    uid = owned_by_the_server(link)
    # Then it is refused, naming the link
    assert why_unsafe(str(link), uid).startswith(f"the symbolic link {link} belongs to")


def test_the_folders_a_link_leads_through_are_checked(folder, tmp_path):
    # Given a safe link in a safe folder, to a file in a folder anyone can write
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    target = write(open_folder / "caps.json", {})
    (folder / "caps.json").symlink_to(os.path.relpath(target, folder))
    # Then the folder the link leads to is named
    assert f"its folder {open_folder} can be written" in why_unsafe(str(folder / "caps.json"), SERVER_UID)


@pytest.mark.skipif(not ROOT, reason="a root-owned file needs root to make")
def test_a_server_running_as_root_takes_its_own_file(folder):
    path = write(folder / "caps.json", {"max_memory_mb": 1})
    os.chown(path, 0, 0)
    assert read_caps_file(str(path), 0).values == {"max_memory_mb": 1}


# -- the watcher --------------------------------------------------------------------------------


class FakeStat:
    """``os.stat`` for the watcher, with the caps file's modification time set by the test."""

    def __init__(self, path: Path):
        self.path, self.mtime = str(path), 0

    def __call__(self, name: str) -> os.stat_result | SimpleNamespace:
        st = os.stat(name)
        if name != self.path:
            return st
        return SimpleNamespace(st_dev=1, st_ino=1, st_mtime_ns=self.mtime, st_ctime_ns=0, st_size=1,
                               st_mode=st.st_mode, st_uid=st.st_uid)


def caps_file(path: Path, log: logging.Logger, command_line=(), **base) -> tuple[CapsFile, FakeStat]:
    stat = FakeStat(path)
    values = {**defaults(), **base}
    made = CapsFile(str(path), values, command_line, log=log, uid=SERVER_UID, stat=stat, clock=lambda: 99.0)
    return made, stat


def test_a_change_is_read_once_it_stays_the_same_for_one_more_look(folder):
    # Given a watched file, read at start
    path = write(folder / "caps.json", {"max_memory_mb": 1024})
    caps, stat = caps_file(path, logging.getLogger("t"))
    caps.at_start(caps.read())
    # When nothing changes, nothing is read
    assert caps.poll() is None and caps.poll() is None
    # When it changes, it is read at the second look that sees the same file
    write(path, {"max_memory_mb": 2048})
    stat.mtime = 1
    assert caps.poll() is None
    read = caps.poll()
    assert read is not None and read.values == {"max_memory_mb": 2048}
    # And not again until it changes again
    assert caps.poll() is None
    # And a file still being written (it changed between two looks) waits
    stat.mtime = 2
    assert caps.poll() is None
    stat.mtime = 3
    assert caps.poll() is None
    assert caps.poll() is not None


def test_a_valid_change_is_put_in_force_in_one_step_and_logged_in_one_line(folder, caplog):
    # Given caps from the file (on top of the config's), and an enforcer in warn mode
    path = write(folder / "caps.json", {"max_memory_mb": 40960, "enforcement": "warn"})
    log = logging.getLogger("caps-test")
    caps, _ = caps_file(path, log, idle_timeout=60.0)
    assert caps.at_start(caps.read())["max_memory_mb"] == 40960
    applied = []
    # When the admin lowers the cap and moves to restart
    write(path, {"max_memory_mb": 20480, "enforcement": "restart"})
    with caplog.at_level(logging.INFO, logger="caps-test"):
        caps.receive(caps.read(), applied.append)
    # Then every setting is handed over at once, the config's own values kept
    assert len(applied) == 1
    assert applied[0]["max_memory_mb"] == 20480 and applied[0]["enforcement"] == "restart"
    assert applied[0]["idle_timeout"] == 60.0
    # And one INFO line names what changed
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"jupyter-tfgpu: caps changed from {path}: max_memory_mb 40960 -> 20480, enforcement warn -> restart"
    ]
    assert caps.to_json() == {"path": str(path), "read_at": 99.0, "in_force": True, "applied_at": 99.0,
                              "settings": ["max_memory_mb", "enforcement"], "overridden": []}


def test_a_setting_taken_out_of_the_file_is_the_configs_again(folder):
    path = write(folder / "caps.json", {"max_memory_mb": 1024, "max_threads": 4})
    caps, _ = caps_file(path, logging.getLogger("t"), max_memory_mb=8192)
    caps.at_start(caps.read())
    applied = []
    write(path, {"max_threads": 4})
    caps.receive(caps.read(), applied.append)
    assert applied[0]["max_memory_mb"] == 8192


def test_the_command_line_wins_over_the_file_and_that_is_reported(folder, caplog):
    # Given max_memory_mb on the command line, and in the caps file too
    path = write(folder / "caps.json", {"max_memory_mb": 1024, "max_threads": 4})
    log = logging.getLogger("caps-cli")
    caps, _ = caps_file(path, log, ["max_memory_mb"], max_memory_mb=8192)
    # When it is read at start
    with caplog.at_level(logging.WARNING, logger="caps-cli"):
        values = caps.at_start(caps.read())
    # Then the command line's value holds, the file's other settings apply, and it is said
    assert values["max_memory_mb"] == 8192 and values["max_threads"] == 4
    assert caps.to_json()["overridden"] == ["max_memory_mb"]
    assert caps.to_json()["settings"] == ["max_threads"]
    assert "the command line wins: the file's value is not used" in caplog.records[0].getMessage()
    # And a change of that setting in the file changes nothing
    applied = []
    write(path, {"max_memory_mb": 2048, "max_threads": 4})
    caps.receive(caps.read(), applied.append)
    assert applied == []


def test_a_bad_file_keeps_the_caps_and_is_logged_once_per_problem(folder, caplog):
    # Given caps in force from the file
    path = write(folder / "caps.json", {"max_memory_mb": 1024})
    log = logging.getLogger("caps-bad")
    caps, _ = caps_file(path, log)
    caps.at_start(caps.read())
    applied = []
    with caplog.at_level(logging.INFO, logger="caps-bad"):
        # When the file goes bad, is read again as bad, then goes bad another way
        write(path, {"max_memory_mb": "lots"})
        caps.receive(caps.read(), applied.append)
        caps.receive(caps.read(), applied.append)
        path.unlink()
        caps.receive(caps.read(), applied.append)
        # Then nothing was put in force; each problem was logged once, as an ERROR
        assert applied == [] and caps.values["max_memory_mb"] == 1024
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2
        assert "TFGPU.max_memory_mb" in errors[0] and "the caps in force stay as they were" in errors[0]
        assert "there is no such file" in errors[1]
        assert [p.message for p in caps.problems] == ["there is no such file"]
        assert caps.to_json()["in_force"] is True  # the caps in force still came from the file
        # And once the file is back as it was, the problem is gone and it says so
        write(path, {"max_memory_mb": 1024})
        caps.receive(caps.read(), applied.append)
    assert caps.problems == [] and applied == []
    assert caplog.records[-1].getMessage() == f"jupyter-tfgpu: caps file {path} valid again: no setting changed"


def test_caps_that_cannot_be_put_in_force_change_nothing(folder):
    path = write(folder / "caps.json", {"max_memory_mb": 1024})
    caps, _ = caps_file(path, logging.getLogger("t"))
    caps.at_start(caps.read())

    def broken(values):
        raise RuntimeError("injected")

    write(path, {"max_memory_mb": 2048})
    caps.receive(caps.read(), broken)
    assert caps.values["max_memory_mb"] == 1024
    assert "injected" in caps.problems[0].message


def test_a_file_bad_at_start_is_put_in_force_once_it_is_fixed(folder):
    # Given a server that started without its caps file (on_config_error = warn)
    path = folder / "caps.json"
    caps, _ = caps_file(path, logging.getLogger("t"))
    caps.at_start(caps.read())
    assert caps.to_json()["in_force"] is False and caps.problems
    # When the admin writes it
    write(path, {"enforcement": "warn"})
    applied = []
    caps.receive(caps.read(), applied.append)
    # Then it is in force
    assert applied[0]["enforcement"] == "warn" and caps.to_json()["in_force"] is True


# -- where it is put in force -------------------------------------------------------------------


def test_new_rules_give_every_kernel_the_whole_grace_period():
    """A kernel over its cap under warn is not restarted the moment the admin moves to restart."""
    # Given a kernel over its cap for an hour, warned about
    over = KernelFacts("k1", "a.ipynb", 500 * MiB, 500 * MiB, 300 * MiB, None)
    enforcer = Enforcer(Rules(action="warn", grace=60), lambda: [over], act=None, emit=None)
    assert [d.action for d in enforcer.decide(now=0.0)] == []
    assert [d.action for d in enforcer.decide(now=3600.0)] == ["warn"]
    # When the rules change to restart
    enforcer.set_rules(Rules(action="restart", grace=60))
    # Then the grace period counts from the change
    assert enforcer.decide(now=3601.0) == []
    assert [d.action for d in enforcer.decide(now=3662.0)] == ["restart"]


def test_a_change_of_caps_makes_every_view_read_everything_again():
    changes = PolicyChanges()
    changes.record(["a.ipynb"])
    told = []
    changes.subscribe(lambda: told.append(changes.to_json()))
    epoch = changes.epoch
    changes.start_over()
    assert told and told[0]["epoch"] != epoch
    assert told[0]["revision"] == 2 and told[0]["changes"] == []

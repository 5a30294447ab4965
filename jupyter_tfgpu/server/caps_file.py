"""The admin's caps file (``TFGPU.caps_file``): which settings it may hold, who may own it, reading it.

A JSON object of TFGPU settings, ``{"max_memory_mb": 20480, "enforcement": "restart"}``, that the
server reads at start and again whenever it changes, so caps and enforcement change without a
restart (``caps_watcher`` follows it). The server's user, and so every notebook, must not be
able to change it: the file, every folder on its path and every symbolic link followed must be
out of that user's hands (see ``why_unsafe``). Its values are checked by the same trait
validators as any TFGPU setting; a file with any problem is not used at all.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from traitlets.config import Config

from jupyter_tfgpu.policy.admin import AdminPolicy
from jupyter_tfgpu.policy.store_file import CorruptStore, read_regular
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import SECTION, Problem, setting_problems
from jupyter_tfgpu.server.kernels.enforcement import Rules

# The settings a caps file may hold: the caps and defaults (AdminPolicy) and the enforcement and
# idle-reaping rules (Rules), each of which the server can put in force while it runs. A new
# cap or rule is a field of one of those two, and so a setting of the file too.
CAPS_FILE_SETTINGS: tuple[str, ...] = (
    *AdminPolicy.settings(),
    *(f.metadata.get("setting", f.name) for f in fields(Rules)),
)
# Settings a caps file must not hold, beyond "it takes effect only at start", and why.
START_ONLY_WHY: dict[str, str] = {
    "hard_caps": (
        "it starts or stops the driver mechanism (an MPS daemon, the kernels' cgroups) that "
        "running kernels are held by"
    ),
}
# A caps file is a few hundred bytes; anything near this is not one.
MAX_CAPS_FILE_BYTES = 64 * 1024
# The file, a policy, its list of devices: 3 levels; deeper is not a caps file, and deep enough
# exhausts the recursion of the checks that follow.
MAX_NESTING = 6
# How long the server waits at start for the file to be read (a hung network file system).
START_READ_SECONDS = 10.0


def server_uid() -> int:
    """The user the server runs as (the user every kernel runs as)."""
    return os.geteuid()


@dataclass(frozen=True)
class CapsRead:
    """One read of the caps file: its settings when it is valid, else why it is not used."""

    path: str
    values: dict[str, Any] | None  # None when the file is not used
    problems: list[Problem] = field(default_factory=list)
    read_at: float = 0.0  # seconds since the epoch


# -- who can change it -------------------------------------------------------------------------


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def lookup(path: str) -> tuple[str, list[tuple[str, os.stat_result]]]:
    """The file ``path`` names, and each name looked up to reach it with its ``lstat``: every
    folder on the way, and every symbolic link followed (the OSError of a name not there)."""
    pending = list(reversed(Path(os.path.abspath(path)).parts[1:]))
    current, seen, hops = "/", [("/", os.lstat("/"))], 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        st = os.lstat(candidate)
        seen.append((candidate, st))
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = "/"
            pending.extend(reversed(Path(target).parts[1:] if os.path.isabs(target) else Path(target).parts))
            continue
        current = candidate
    return current, seen


def why_unsafe(path: str, uid: int | None = None) -> str | None:
    """Why the user ``uid`` (the server's) could change what ``path`` holds, or None if it cannot.

    The file and every symbolic link followed must not be that user's, nor writable by group or
    others (a POSIX ACL that lets anyone else write shows as group write); every folder on the
    way must not be that user's, nor writable by group or others unless it is sticky (like
    /tmp, where only an entry's owner may rename or remove it). A server running as root can
    change anything: for it only the modes count.
    """
    uid = server_uid() if uid is None else uid
    real, seen = lookup(path)
    for name, st in seen:
        if name == real and not stat.S_ISREG(st.st_mode):
            continue  # not a file at all: the read refuses it, saying what it is
        what = "the file" if name == real else (
            f"the symbolic link {name}" if stat.S_ISLNK(st.st_mode) else f"its folder {name}"
        )
        mode = stat.S_IMODE(st.st_mode)
        link = stat.S_ISLNK(st.st_mode)
        if uid != 0 and st.st_uid == uid:
            return (
                f"{what} belongs to {_user(uid)}, the user the server and every notebook run as, "
                f"who could change the caps with it; make root own it (chown {'-h ' if link else ''}root: {name})"
            )
        if link:
            continue  # a link's own mode means nothing
        sticky_folder = stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_folder:
            return (
                f"{what} can be written by its group or by anyone (mode {mode:04o}), so possibly "
                f"by the server's user; take that away (chmod go-w {name})"
            )
    return None


# -- what it holds -------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    twice = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
    if twice:
        raise ValueError(f"{', '.join(twice)} given more than once")
    return dict(pairs)


def _depth(value: Any) -> int:
    """How deep ``value`` nests (iteratively: a recursive walk is what a deep nest breaks)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def parse_caps(raw: bytes, path: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The settings in a caps file's bytes, or None and the problems (each naming its setting)."""
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError, MemoryError) as err:
        return None, [Problem(None, f"not a JSON object of TFGPU settings: {err}", path)]
    if not isinstance(data, dict):
        return None, [
            Problem(None, f'expected a JSON object such as {{"max_memory_mb": 20480}}, got {type(data).__name__}', path)
        ]
    if _depth(data) > MAX_NESTING:
        return None, [Problem(None, f"not a caps file: it nests deeper than {MAX_NESTING} levels", path)]
    start_only = [
        name for name in data if name not in CAPS_FILE_SETTINGS and name in TFGPU.class_traits(config=True)
    ]
    problems = [Problem(f"{SECTION}.{name}", _only_at_start(name), path) for name in start_only]
    checked = {name: value for name, value in data.items() if name not in start_only}
    problems += [
        Problem(problem.setting, problem.message, path)
        for problem in setting_problems(Config({SECTION: checked}))
    ]
    if problems:
        return None, problems
    # As the traits hold them once validated (a policy in its one spelling).
    settings = TFGPU(config=Config({SECTION: data}))
    return {name: getattr(settings, name) for name in data}, []


def _only_at_start(name: str) -> str:
    why = f" ({START_ONLY_WHY[name]})" if name in START_ONLY_WHY else ""
    return (
        f"not read from the caps file: {name} takes effect only when the server starts{why}; set "
        f"it in a config file or on the command line. A caps file holds "
        f"{', '.join(CAPS_FILE_SETTINGS)}"
    )


def read_caps_file(path: str, uid: int | None = None, clock: Callable[[], float] = time.time) -> CapsRead:
    """Read and check the caps file; never raises, and never blocks on what ``path`` names."""
    read_at = clock()

    def refused(message: str) -> CapsRead:
        return CapsRead(path, None, [Problem(None, message, path)], read_at)

    try:
        unsafe = why_unsafe(path, uid)
        if unsafe:
            return refused(f"not used: {unsafe}")
        found = read_regular(Path(path), MAX_CAPS_FILE_BYTES)
    except FileNotFoundError:
        found = None
    except CorruptStore as err:
        return refused(f"not used: {str(err).replace('a policy store', 'a caps file')}")
    except OSError as err:
        return refused(f"cannot be read: {err.strerror or err}")
    if found is None:
        return refused("there is no such file")
    try:
        values, problems = parse_caps(found[0], path)
    except (RecursionError, MemoryError) as err:  # a value nested deeper than a check can follow
        return refused(f"not used: a value could not be checked ({type(err).__name__})")
    return CapsRead(path, values, problems, read_at)


def read_within(read: Callable[[], CapsRead], path: str, seconds: float = START_READ_SECONDS) -> CapsRead:
    """``read()`` in a thread of its own, waited for ``seconds`` at most: at start, a file system
    that hangs must neither hang the server nor let it start without the caps."""
    box: list[CapsRead] = []

    def run() -> None:
        try:
            box.append(read())
        except Exception as err:  # noqa: BLE001 - any failure is the answer
            box.append(CapsRead(path, None, [Problem(None, f"cannot be read: {err!r}", path)], time.time()))

    thread = threading.Thread(target=run, name="tfgpu-caps-file", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        message = f"cannot be read: no answer within {seconds:g} s (a file system that hangs?)"
        return CapsRead(path, None, [Problem(None, message, path)], time.time())
    return box[0]

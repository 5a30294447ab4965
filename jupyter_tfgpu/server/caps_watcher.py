"""The caps file while the server runs: what of it is in force, its problems, and the thread that
follows it.

The file is one layer of the settings: over the config files and the environment, under the
command line. A thread looks at the file's stat (and its folders' owners and modes) every
``POLL_SECONDS``; a change is read once it has stayed the same for one more look (an editor that
writes in place is not read half-way), off the event loop. What was read is handed to the event
loop, where a valid file is put in force in one step and an invalid one changes nothing: the
caps in force stay as they were, and its problems are logged (once each) and listed in
GET config until the file is valid again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jupyter_tfgpu.server.caps_file import CAPS_FILE_SETTINGS, CapsRead, read_caps_file
from jupyter_tfgpu.server.config_check import Problem

# Seconds between two looks at the file's stat; a change is read after two looks that agree.
POLL_SECONDS = 2.0

Stamp = tuple[Any, ...]


def shown(value: Any) -> str:
    """A setting's value as the log shows it."""
    if value is None:
        return "none"
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``max_memory_mb 40960 -> 20480`` for each setting whose value differs."""
    return [
        f"{name} {shown(old.get(name))} -> {shown(new.get(name))}"
        for name in CAPS_FILE_SETTINGS
        if old.get(name) != new.get(name)
    ]


class CapsFile:
    """One server's caps file: the values in force, its state for GET config, and its watcher.

    ``base`` holds the settings as the config files, the environment and the command line give
    them; ``command_line`` names those the command line gave, which the file never changes.
    State changes happen on the event loop (``receive``); the watcher thread only looks and reads.
    """

    def __init__(
        self,
        path: str,
        base: Mapping[str, Any],
        command_line: Iterable[str] = (),
        *,
        log: logging.Logger | None = None,
        uid: int | None = None,
        stat: Callable[[str], os.stat_result] = os.stat,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.log = log or logging.getLogger(__name__)
        self._base = {name: base[name] for name in CAPS_FILE_SETTINGS}
        self._command_line = frozenset(command_line) & frozenset(CAPS_FILE_SETTINGS)
        self._uid = uid
        self._stat = stat
        self._clock = clock
        self.values: dict[str, Any] = dict(self._base)  # the caps file's settings' values in force
        self.problems: list[Problem] = []  # why the file as it is now is not used
        self.read_at: float | None = None  # the last read, valid or not
        self.applied_at: float | None = None  # the read whose values are in force
        self.from_file: list[str] = []  # the settings in force that the file gave
        self.overridden: list[str] = []  # in the file and on the command line: not from the file
        self._logged: set[str] = set()
        self._seen: Stamp | None = None
        self._pending: Stamp | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -------------------------------------------------------------------------------

    def stamp(self) -> Stamp:
        """What changes when the file is edited or replaced, or its or a folder's owner or mode
        changes (a folder made safe again is seen too)."""
        parts: list[Any] = []
        path = os.path.abspath(self.path)
        folders = []
        folder = os.path.dirname(path)
        while True:
            folders.append(folder)
            if os.path.dirname(folder) == folder:
                break
            folder = os.path.dirname(folder)
        for name in reversed(folders):
            parts.append(self._look(name, lambda st: (st.st_ino, st.st_mode, st.st_uid)))
        parts.append(
            self._look(
                path,
                lambda st: (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode, st.st_uid),
            )
        )
        return tuple(parts)

    def _look(self, path: str, fields: Callable[[os.stat_result], tuple]) -> tuple:
        try:
            return fields(self._stat(path))
        except OSError as err:
            return ("no stat", err.errno)

    def read(self) -> CapsRead:
        """Read the file now (blocking: off the event loop), remembering what it looked like."""
        seen = self.stamp()
        found = read_caps_file(self.path, self._uid, self._clock)
        self._seen, self._pending = seen, None
        return found

    def poll(self) -> CapsRead | None:
        """One look (in the watcher's thread): a read when the file changed and then stayed so."""
        now = self.stamp()
        if now == self._seen:
            self._pending = None
            return None
        if now != self._pending:
            self._pending = now  # changed: read it at the next look if it stays so
            return None
        return self.read()

    # -- putting it in force (on the event loop) -------------------------------------------------

    def layered(self, file_values: Mapping[str, Any]) -> dict[str, Any]:
        """The values in force with the file's: each of its settings, unless the command line gave it."""
        return {
            name: file_values[name] if name in file_values and name not in self._command_line else value
            for name, value in self._base.items()
        }

    def at_start(self, read: CapsRead) -> dict[str, Any]:
        """The first read, at start: the values to start with (the start-up check reports its
        problems)."""
        self.read_at = read.read_at
        self.problems = list(read.problems)
        self._logged = {str(problem) for problem in read.problems}
        if read.values is not None:
            self._take(read)
            self._say_overridden()
        return dict(self.values)

    def receive(self, read: CapsRead, apply: Callable[[dict[str, Any]], None]) -> None:
        """A read while the server runs: put a valid file in force with ``apply(values)`` (all of
        it at once), or keep what is in force and report why."""
        self.read_at = read.read_at
        if read.values is None:
            self.problems = list(read.problems)
            for problem in read.problems:
                if str(problem) not in self._logged:
                    self._logged.add(str(problem))
                    self.log.error("jupyter-tfgpu: %s; the caps in force stay as they were", problem)
            return
        new = self.layered(read.values)
        changed = differences(self.values, new)
        if changed:
            try:
                apply(new)
            except Exception as err:  # noqa: BLE001 - whatever it is, the caps in force stay
                self.log.exception("jupyter-tfgpu: the caps from %s could not be put in force", self.path)
                self.problems = [Problem(None, f"could not be put in force: {err!r}", self.path)]
                return
        was_refused = bool(self.problems)
        overridden_before = self.overridden
        self._take(read)
        self.problems, self._logged = [], set()
        if self.overridden != overridden_before:
            self._say_overridden()
        if changed:
            self.log.info("jupyter-tfgpu: caps changed from %s: %s", self.path, ", ".join(changed))
        else:
            again = "valid again" if was_refused else "read again"
            self.log.info("jupyter-tfgpu: caps file %s %s: no setting changed", self.path, again)

    def _take(self, read: CapsRead) -> None:
        given = read.values or {}
        self.values = self.layered(given)
        self.applied_at = read.read_at
        self.from_file = [n for n in CAPS_FILE_SETTINGS if n in given and n not in self._command_line]
        self.overridden = [n for n in CAPS_FILE_SETTINGS if n in given and n in self._command_line]

    def _say_overridden(self) -> None:
        if self.overridden:
            self.log.warning(
                "jupyter-tfgpu: %s in the caps file %s: the command line gives %s too, and the "
                "command line wins: the file's value is not used",
                ", ".join(self.overridden),
                self.path,
                "it" if len(self.overridden) == 1 else "them",
            )

    def to_json(self) -> dict[str, Any]:
        """GET config's ``caps_file``."""
        return {
            "path": self.path,
            "read_at": self.read_at,
            "in_force": self.applied_at is not None,
            "applied_at": self.applied_at,
            "settings": list(self.from_file),
            "overridden": list(self.overridden),
        }

    # -- the watcher thread ----------------------------------------------------------------------

    def start_watching(self, deliver: Callable[[CapsRead], None], interval: float | None = None) -> None:
        """Look at the file every ``interval`` seconds in a thread; hand each read to ``deliver``
        (which takes it to the event loop)."""
        interval = POLL_SECONDS if interval is None else interval
        self._stop.clear()

        def run() -> None:
            failing = False
            while not self._stop.wait(interval):
                try:
                    found = self.poll()
                    if found is not None:
                        deliver(found)
                    failing = False
                except Exception:  # noqa: BLE001 - keep watching; say it once
                    if not failing:
                        self.log.exception("jupyter-tfgpu: looking at the caps file %s failed", self.path)
                    failing = True

        self._thread = threading.Thread(target=run, name="tfgpu-caps-watcher", daemon=True)
        self._thread.start()

    def stop_watching(self, wait: float = 0.0) -> None:
        """Stop the watcher: it ends after the look under way (waited for up to ``wait`` s)."""
        self._stop.set()
        if self._thread is not None and wait:
            self._thread.join(timeout=wait)

"""Per-notebook policies on disk: atomic writes, safe against two writers, loses nothing.

One JSON file holds every notebook's policy, keyed by the notebook's path relative to the
server root. Each write takes an exclusive ``flock`` on a lock file, re-reads the file (another
server process may have written meanwhile), and replaces it atomically (temp file, fsync,
rename, fsync of the folder). A file that cannot be parsed is moved aside, never overwritten,
and the problem is reported until an admin looks at it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

FORMAT_VERSION = 1


class PolicyStore:
    """Notebook path -> that notebook's own policy."""

    def __init__(self, path: str | os.PathLike[str], log: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self.log = log or logging.getLogger(__name__)
        self.problems: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int] | None = None

    # -- reading -----------------------------------------------------------------------------

    def all(self) -> dict[str, dict[str, Any]]:
        """Every stored policy."""
        with self._lock:
            return {k: dict(v) for k, v in self._read().items()}

    def get(self, key: str) -> dict[str, Any] | None:
        """One notebook's own policy, or None."""
        with self._lock:
            policy = self._read().get(key)
            return dict(policy) if policy is not None else None

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's content, re-read only when it changed on disk."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache, self._stamp = {}, None
            return self._cache
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._cache = self._parse()
            self._stamp = stamp
        return self._cache

    def _parse(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            # Decoding inside the try: bytes that are not UTF-8 are a corrupt file too.
            data = json.loads(raw.decode("utf-8"))
            policies = data["policies"]
            if not isinstance(policies, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in policies.items()
            ):
                raise ValueError("'policies' must map notebook paths to objects")
            return policies
        except (ValueError, KeyError, TypeError) as err:
            return self._set_aside(err)

    def _set_aside(self, err: Exception) -> dict[str, dict[str, Any]]:
        """Keep an unreadable file for the admin, report it, and start empty."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{aside.name}.{n}")
            n += 1
        os.replace(self.path, aside)
        problem = {
            "file": str(self.path),
            "moved_to": str(aside),
            "error": f"{type(err).__name__}: {err}",
            "time": time.time(),
        }
        self.problems.append(problem)
        self.log.error(
            "jupyter-tfgpu: policy store %s could not be read (%s); it was moved to %s and "
            "the store starts empty. Repair and move it back to restore the policies.",
            self.path,
            problem["error"],
            aside,
        )
        return {}

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Lock (threads and processes), yield the current content, then write it back."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            with open(lock_path, "a+") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    self._remove_stale_temp_files()
                    self._stamp = None  # another process may have written: read afresh
                    policies = {k: dict(v) for k, v in self._read().items()}
                    yield policies
                    self._write(policies)
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _remove_stale_temp_files(self) -> None:
        """Temp files of writers that died mid-write (only writers holding the lock make them)."""
        for stale in self.path.parent.glob(f".{self.path.name}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def _write(self, policies: dict[str, dict[str, Any]]) -> None:
        data = {"version": FORMAT_VERSION, "policies": dict(sorted(policies.items()))}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, ensure_ascii=False)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._cache, self._stamp = policies, None

    def put(self, key: str, policy: dict[str, Any]) -> None:
        """Store (replace) one notebook's policy."""
        with self._writing() as policies:
            policies[key] = dict(policy)

    def delete(self, key: str) -> bool:
        """Remove one notebook's policy; False if it had none."""
        with self._writing() as policies:
            return policies.pop(key, None) is not None

    def rename(self, old: str, new: str) -> int:
        """Follow a renamed notebook or folder; returns how many policies moved."""
        with self._writing() as policies:
            moved = {
                k: v for k, v in policies.items() if k == old or k.startswith(old.rstrip("/") + "/")
            }
            for key, policy in moved.items():
                del policies[key]
                policies[new + key[len(old) :]] = policy
            return len(moved)

    def delete_tree(self, path: str) -> int:
        """Forget a deleted notebook, or everything under a deleted folder."""
        with self._writing() as policies:
            gone = [k for k in policies if k == path or k.startswith(path.rstrip("/") + "/")]
            for key in gone:
                del policies[key]
            return len(gone)

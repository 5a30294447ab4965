"""Per-notebook policies on disk: atomic writes, safe against two writers, loses nothing.

One JSON file holds every notebook's policy, keyed by the notebook's path relative to the
server root. Each write takes an exclusive ``flock`` on a lock file, re-reads the file (another
server process may have written meanwhile), and replaces it atomically (temp file, fsync,
rename, fsync of the folder). Only a regular file of at most ``max_bytes`` is read, without
blocking (``store_file.read_regular``); anything else at the path (a FIFO, a device, a huge file)
and a file that cannot be parsed are moved aside, never overwritten, and reported.

Reads answer from an in-memory copy and never touch the disk or wait for a lock: the server
reads policies on its event loop, and another process holding the lock (a second server on
the same home, NFS) or a slow fsync must not stall it. The copy is replaced after each write
and by ``refresh()``, which ``start_refreshing`` runs in a worker thread (first a check that the
folder can be written, then the first read, waited for ``FIRST_READ_WAIT`` seconds at most).
Until the first read the store answers that no notebook has a policy, and says so in
``problems``. A writer waits for the lock for ``lock_timeout`` seconds at most, then gives up
with ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from jupyter_tfgpu.policy.store_file import (
    MAX_STORE_BYTES,
    CorruptStore,
    Stamp,
    decode,
    encode,
    probe_folder,
    read_regular,
    remove_stale_temp_files,
    set_aside,
    stamp_of,
    user_name,
    write_atomically,
)

FIRST_READ_WAIT = 5.0  # seconds the server's start waits for the first read of the file
LOCK_TIMEOUT = 5.0  # seconds a writer waits for another process's lock
LOCK_POLL = 0.02  # seconds between two tries of the lock
REFRESH_INTERVAL = 2.0  # seconds between two looks for another process's writes


class StoreUnavailable(OSError):
    """The store cannot be read or written now (locked, unreadable, disk full): HTTP 503."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class PolicyStore:
    """Notebook path -> that notebook's own policy."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        log: logging.Logger | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_bytes: int = MAX_STORE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.log = log or logging.getLogger(__name__)
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.sleep = sleep
        self._set_aside_problems: list[dict[str, Any]] = []
        self._unreadable: dict[str, Any] | None = None
        self._folder_problem: dict[str, Any] | None = None
        self._made = time.time()
        # Held by whoever does file I/O in this process (a writer, or refresh); never by readers.
        self._io_lock = threading.Lock()
        # Replaced whole, never changed in place: readers may hold an old one safely.
        self._cache: dict[str, dict[str, Any]] = {}
        self._stamp: Stamp | None = None
        # Whether the file was read (or found unreadable) at least once: until then the store
        # answers that no notebook has a policy, and says so in its problems.
        self._read = False
        self._published = False
        self._stop_refreshing: threading.Event | None = None
        # Called with the keys whose policy changed (after the first read), from the thread
        # that found or made the change.
        self.on_change: Callable[[set[str]], None] | None = None

    @property
    def lock_path(self) -> Path:
        """The file writers ``flock`` (the store file itself is replaced on each write)."""
        return self.path.with_name(self.path.name + ".lock")

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Files set aside as corrupt, why the store cannot be read or written now, and that
        it was not read yet, if so."""
        current = [p for p in (self._folder_problem, self._unreadable) if p is not None]
        if not self._read:
            not_read = (
                f"{self.path} has not been read yet (a slow or stuck file system?): until it is, "
                "no notebook's own policy applies and kernels start with the admin default"
            )
            current.append(self._problem(not_read, when=self._made))
        return [*self._set_aside_problems, *current]

    def _problem(
        self, error: str, moved_to: Path | None = None, when: float | None = None
    ) -> dict[str, Any]:
        """One entry of ``problems`` (the shape of the API's StoreProblem)."""
        return {
            "file": str(self.path),
            "moved_to": str(moved_to) if moved_to is not None else None,
            "error": error,
            "time": time.time() if when is None else when,
        }

    @property
    def unavailable(self) -> str | None:
        """Why the store file cannot be read now; None when it can."""
        return self._unreadable["error"] if self._unreadable is not None else None

    # -- reading (from memory only: never the disk, never a lock) ----------------------------

    def all(self) -> dict[str, dict[str, Any]]:
        """Every stored policy (none before the first read)."""
        return {k: dict(v) for k, v in self._cache.items()}

    def get(self, key: str) -> dict[str, Any] | None:
        """One notebook's own policy, or None (also before the first read)."""
        policy = self._cache.get(key)
        return dict(policy) if policy is not None else None

    # -- refreshing (in a worker thread) -----------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the file if it changed on disk; False when a writer is at work (it publishes
        what it writes). Does file I/O: call it off the event loop."""
        if self._folder_problem is not None:
            self.check_folder()  # until it is fixed: then the problem goes away by itself
        if not self._io_lock.acquire(blocking=False):
            return False
        try:
            self._reload()
        finally:
            self._io_lock.release()
        return True

    def start_refreshing(
        self, interval: float = REFRESH_INTERVAL, wait: float = FIRST_READ_WAIT
    ) -> bool:
        """In a daemon thread: check the folder, read the file, then look for other processes'
        writes every ``interval`` seconds. Waits ``wait`` seconds at most for the first read;
        False (and an error logged) when it was not done by then: it goes on in the thread."""
        if self._stop_refreshing is not None:
            return self._read
        stop = self._stop_refreshing = threading.Event()
        first_read = threading.Event()

        def run() -> None:
            self._refresh_logging_errors(self.check_folder)
            with self._io_lock:  # waits for a writer, if any: it publishes what it wrote
                self._refresh_logging_errors(self._reload)
            first_read.set()
            while not stop.wait(interval):
                self._refresh_logging_errors(self.refresh)

        threading.Thread(target=run, name="tfgpu-policy-store", daemon=True).start()
        if first_read.wait(wait) and self._read:
            return True
        self.log.error(
            "jupyter-tfgpu: policy store %s not read within %g s of start (a slow or stuck file "
            "system?); until it is, kernels start with the admin default, and the caps hold. "
            "The read goes on in the background.",
            self.path,
            wait,
        )
        return False

    def _refresh_logging_errors(self, step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - keep looking; the next round may succeed
            self.log.exception("jupyter-tfgpu: refreshing the policy store failed")

    def check_folder(self) -> bool:
        """Whether this process can make the store's folder and write in it, as a write needs
        to; when not, a problem that names the folder and the fix. Does file I/O."""
        folder = self.path.parent
        try:
            probe_folder(self.path, self.lock_path)
        except OSError as err:
            user = user_name()
            error = (
                f"the policy store's folder {folder} cannot be created or written by user {user} "
                f"({type(err).__name__}: {err}); no policy can be saved until it can: "
                f"create {folder}, writable by {user}"
            )
            if self._folder_problem is None or self._folder_problem["error"] != error:
                self.log.error("jupyter-tfgpu: %s", error)
                self._folder_problem = self._problem(error)
            return False
        self._folder_problem = None
        return True

    def stop_refreshing(self) -> None:
        """Stop the refresh thread (not waited for: it may be stuck on a slow file system)."""
        if self._stop_refreshing is not None:
            self._stop_refreshing.set()
            self._stop_refreshing = None

    def _reload(self) -> None:
        """Read the file if its stamp changed (caller holds ``_io_lock``)."""
        try:
            stamp = stamp_of(self.path)
            if stamp is not None and stamp == self._stamp:
                return
            found = read_regular(self.path, self.max_bytes)
            policies, stamp = (decode(found[0]), found[1]) if found is not None else ({}, None)
        except CorruptStore:
            # Set it aside under the writers' lock: a writer of another process may be replacing
            # it with a good file right now, which must not be the one moved away.
            try:
                with self._flocked():
                    self._publish(self._load_locked(), stamp_of(self.path))
            except OSError as err:
                self._mark_unreadable(err)
        except OSError as err:
            self._mark_unreadable(err)
        else:
            self._publish(policies, stamp)

    def _publish(
        self, policies: dict[str, dict[str, Any]], stamp: Stamp | None
    ) -> None:
        old, first = self._cache, not self._published
        self._cache, self._stamp, self._unreadable = policies, stamp, None
        self._published = self._read = True
        if first or self.on_change is None:
            return
        changed = {key for key in old.keys() | policies.keys() if old.get(key) != policies.get(key)}
        if changed:
            try:
                self.on_change(changed)
            except Exception:  # noqa: BLE001 - a listener must not undo a stored write
                self.log.exception("jupyter-tfgpu: a policy change listener failed")

    def _mark_unreadable(self, err: OSError) -> None:
        """Keep serving the last good copy, say why the file cannot be read, log it once."""
        error = err.message if isinstance(err, StoreUnavailable) else f"{type(err).__name__}: {err}"
        if self._unreadable is None or self._unreadable["error"] != error:
            self.log.error(
                "jupyter-tfgpu: policy store %s cannot be read (%s); the policies last read "
                "from it (none if it never could be) apply, and changes are refused until it can.",
                self.path,
                error,
            )
            self._unreadable = self._problem(error)
        self._read = True

    def _load_locked(self) -> dict[str, dict[str, Any]]:
        """The file's content; a corrupt file is set aside (caller holds the ``flock``)."""
        try:
            found = read_regular(self.path, self.max_bytes)
            return decode(found[0]) if found is not None else {}
        except CorruptStore as err:
            return self._set_aside(err)

    def _set_aside(self, err: CorruptStore) -> dict[str, dict[str, Any]]:
        """Keep an unreadable file for the admin, report it, and start empty."""
        aside = set_aside(self.path)
        if aside is None:
            # Another process (an older server not taking the lock to do this) moved it first.
            return {}
        problem = self._problem(str(err), moved_to=aside)
        self._set_aside_problems.append(problem)
        self.log.error(
            "jupyter-tfgpu: policy store %s could not be read (%s); it was moved to %s and "
            "the store starts empty. Repair and move it back to restore the policies.",
            self.path,
            problem["error"],
            aside,
        )
        return {}

    # -- writing (in a worker thread) --------------------------------------------------------

    @contextlib.contextmanager
    def _flocked(self) -> Iterator[None]:
        """Hold the writers' lock (threads and processes), or raise StoreUnavailable in time."""
        deadline = self.clock() + self.lock_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock_file:
            self._wait_for_flock(lock_file, deadline)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _wait_for_flock(self, lock_file: IO[str], deadline: float) -> None:
        # LOCK_NB in a loop rather than a blocking flock: a blocking one cannot be given up.
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self.clock() >= deadline:
                    raise StoreUnavailable(
                        f"the policy store {self.path} is locked by another process "
                        f"(waited {self.lock_timeout:g} s for {self.lock_path}); try again"
                    ) from None
                self.sleep(LOCK_POLL)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Lock, yield the current content, then write it back (StoreUnavailable on failure)."""
        if not self._io_lock.acquire(timeout=max(self.lock_timeout, 0.001)):
            raise StoreUnavailable(
                f"the policy store {self.path} is busy: this server is writing or reading it "
                "(a slow file system?); try again"
            )
        try:
            with self._as_unavailable(), self._flocked():
                remove_stale_temp_files(self.path)
                # Another process may have written: read afresh, never from the copy.
                found = self._load_locked()
                policies = {k: dict(v) for k, v in found.items()}
                yield policies
                if policies == found:
                    # Nothing to change (a reset of a notebook without a policy, the same policy
                    # again): no rewrite and fsync, and no change for the views; what was read
                    # (perhaps another process's write) is what this server serves now.
                    self._publish(found, stamp_of(self.path))
                else:
                    self._write(policies)
        finally:
            self._io_lock.release()

    @contextlib.contextmanager
    def _as_unavailable(self) -> Iterator[None]:
        """A write that fails on the file system (no permission, a folder, disk full) is a
        StoreUnavailable that says why, not an internal error."""
        try:
            yield
        except StoreUnavailable:
            raise
        except OSError as err:
            raise StoreUnavailable(
                f"the policy store {self.path} cannot be written ({type(err).__name__}: {err})"
            ) from err

    def _write(self, policies: dict[str, dict[str, Any]]) -> None:
        content = encode(policies)
        if len(content) > self.max_bytes:
            # Written, it would be set aside as too large at the next read: refuse it instead.
            raise StoreUnavailable(
                f"the policy store {self.path} would hold {len(content)} bytes, more than the "
                f"{self.max_bytes} bytes it may hold; remove the policies of notebooks that are gone"
            )
        stamp = write_atomically(self.path, content)
        self._publish(policies, stamp)
        self._folder_problem = None  # it was written in: whatever the check found is fixed

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

"""The server's own MPS control daemon: started with it, watched, restarted, stopped, removed.

One daemon per server, run as the server's user on every GPU of the machine (its
``CUDA_VISIBLE_DEVICES`` by UUID; each kernel's own variable picks among them), with its pipe and
log folders private (0700) in the server's hard-caps runtime folder, so no other server or user
shares them. A UNIX socket's path has at most 107 bytes: where the runtime folder is too deep
for the daemon's sockets, the pipe folder is a private one under the system's temporary folder
instead (said in GET status).

After every start the admin's ``max_memory_mb`` is set as each GPU's default pinned memory limit
(``set_default_device_pinned_mem_limit <uuid> <N>M``), the limit no client of the daemon can go
past; a daemon loses its settings when it quits, so they are set at each start. ``check`` runs
every few seconds from the mechanism's watcher (never on the event loop; time is the clock
given): a daemon that died is started again, at once the first time, then after a back-off that
doubles while it keeps dying; a new ``max_memory_mb`` (the caps file) is set as the default for
servers started from then on and on the running servers for clients that connect from then on:
CUDA processes already connected keep the limit they started with. ``stop`` quits the daemon
(``quit -t``: servers forced down after ``QUIT_SECONDS``), kills whatever of it is left, and
removes both folders. Not yet run on a GPU: NVIDIA's binary has not been driven by this code.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

from jupyter_tfgpu.server.hardcaps.mechanism import MechanismError
from jupyter_tfgpu.server.hardcaps.mps_control import COMMAND_SECONDS, MpsControl, MpsUnreachable

QUIT_SECONDS = 5.0  # quit -t: how long servers may finish before they are forced down
BACKOFF_SECONDS = 5.0  # the wait before a second restart; doubled after each one that failed
BACKOFF_MAX_SECONDS = 300.0
STABLE_SECONDS = 60.0  # a daemon that ran this long and then died is restarted at once
# The longest socket name NVIDIA's daemon makes in its pipe folder, and a UNIX socket's limit.
LONGEST_SOCKET = "control_privileged"
SOCKET_PATH_MAX = 107
# The default limit set when the admin's max_memory_mb is removed while the daemon runs (a set
# default cannot be unset): the largest cap a policy may name, more than any GPU has.
NO_LIMIT_MB = 16777216
APPLIES_TO = (
    "a new max_memory_mb applies to CUDA processes that connect after the change; those "
    "already connected keep the limit they started with until their kernel restarts"
)


def is_running(pid: int | None, started: float | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie), the one started at ``started``."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE
        return alive and (started is None or abs(proc.create_time() - started) < 0.05)
    except psutil.Error:
        return False


def _started(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).create_time() if pid is not None else None
    except psutil.Error:
        return None


def pipe_folder(runtime_dir: Path) -> tuple[Path, bool]:
    """Where the daemon's pipe folder goes: (folder, whether it is the fallback under the
    temporary folder because the runtime folder is too deep for a socket's path)."""
    inside = runtime_dir / "mps-pipe"
    if len(os.fsencode(inside / LONGEST_SOCKET)) <= SOCKET_PATH_MAX:
        return inside, False
    # Made now, private and named at random (a shared /tmp): kept until the daemon stops.
    return Path(tempfile.mkdtemp(prefix="tfgpu-mps-")), True


def make_private(folder: Path) -> None:
    """Make ``folder`` (and its parents), a folder of this user that only this user can open;
    MechanismError when the path is someone else's or not a folder (a shared /tmp)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise MechanismError(f"{folder} is not a folder of the server's user")
        folder.chmod(0o700)
    except OSError as err:
        raise MechanismError(f"the MPS folder {folder} could not be made: {err}") from err


class MpsDaemon:
    """The daemon of one server, and what it was told."""

    def __init__(
        self,
        binary: str,
        runtime_dir: Path,
        devices: Sequence[str],
        limit_mb: Callable[[], int | None],
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
        on_down: Callable[[str], None] = lambda why: None,
        on_up: Callable[[], None] = lambda: None,
        sleep: Callable[[float], None] = time.sleep,
        command_seconds: float = COMMAND_SECONDS,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.devices = list(devices)  # the GPUs' UUIDs
        self.limit_mb = limit_mb  # the admin's max_memory_mb now
        self.clock, self.sleep = clock, sleep
        self.log = log or logging.getLogger(__name__)
        self.on_down, self.on_up = on_down, on_up
        self.pipe_dir, self.pipe_outside = pipe_folder(runtime_dir)
        self.log_dir = runtime_dir / "mps-log"
        self.control = MpsControl(
            binary, str(self.pipe_dir), str(self.log_dir), timeout=command_seconds
        )
        self.state = "stopped"  # starting, running, restarting, failed, stopped
        self.pid: int | None = None
        self._pid_started: float | None = None
        self.started_at: float | None = None  # by the clock
        self.servers: list[int] = []  # as the last get_server_list said
        self._left: set[int] = set()  # servers of daemons that died, killed at stop if alive
        self.applied_mb: int | None = None  # the default limit set, MiB
        self.shown: dict[str, str] = {}  # per GPU, the default limit as the daemon read it back
        self.restarts = 0
        self.failures = 0  # restarts that failed, or daemons that died young, in a row
        self.last_error: str | None = None
        self.next_restart: float | None = None  # by the clock, while restarting
        self.lock = threading.RLock()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon and set its limits; MechanismError when it cannot (said in words)."""
        with self.lock:
            self.state = "starting"
            try:
                self._start()
            except MechanismError as err:
                self.state, self.last_error = "failed", str(err)
                self._kill_daemon()
                raise
            self.state = "running"

    def _start(self) -> None:
        for folder in (self.pipe_dir, self.log_dir):
            make_private(folder)
        self.control.start_daemon(self.devices)
        self.pid = self.control.daemon_pid()
        self._pid_started = _started(self.pid)
        self.started_at = self.clock()
        self.servers = self.control.server_pids()
        self.applied_mb, self.shown = None, {}
        self._apply_limits()

    def _apply_limits(self) -> None:
        """Set the admin's max_memory_mb as every GPU's default limit, and on running servers."""
        mb = self.limit_mb()
        if mb is None and self.applied_mb is None:
            return
        mb = NO_LIMIT_MB if mb is None else mb
        for device in self.devices:
            self.shown[device] = self.control.set_default_limit(device, mb)
            for server in self.servers:
                self.control.set_server_limit(server, device, mb)
        self.applied_mb = mb

    def check(self) -> None:
        """Watch once: a daemon that died is restarted when its back-off is over; a changed
        max_memory_mb is set. Blocking (it runs the front end)."""
        with self.lock:
            now = self.clock()
            if self.state == "running":
                if not is_running(self.pid, self._pid_started):
                    self._down(now, f"the MPS control daemon (PID {self.pid}) is gone")
                else:
                    try:
                        self.servers = self.control.server_pids()
                        if self.limit_mb() != self.applied_mb:
                            self._apply_limits()
                    except MpsUnreachable as err:
                        self._down(now, str(err))
                    except MechanismError as err:
                        self.last_error = str(err)
                        self.log.warning("jupyter-tfgpu: MPS: %s", err)
            if self.state == "restarting" and now >= (self.next_restart or now):
                self._restart(now)

    def _down(self, now: float, why: str) -> None:
        self.log.error("jupyter-tfgpu: %s; it will be started again", why)
        # At once, unless the daemons before it died young too (then after a growing wait).
        young = self.started_at is not None and now - self.started_at < STABLE_SECONDS
        self.next_restart = now + (self._backoff() if young else 0.0)
        self.failures = self.failures + 1 if young else 0
        self.state, self.last_error = "restarting", why
        self._left.update(self.servers)
        self._kill_daemon()  # one that stopped answering without dying
        self.on_down(why)

    def _backoff(self) -> float:
        """The wait before the next start, from the failures in a row so far: none after the
        first, then BACKOFF_SECONDS, doubling up to BACKOFF_MAX_SECONDS."""
        if self.failures == 0:
            return 0.0
        return min(BACKOFF_MAX_SECONDS, BACKOFF_SECONDS * 2 ** (self.failures - 1))

    def _restart(self, now: float) -> None:
        self.restarts += 1
        # A killed daemon leaves its sockets and pid file: a new one starts on a clean folder
        # (the same folder: the kernels' variables name it).
        for entry in self.pipe_dir.iterdir() if self.pipe_dir.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        try:
            self._start()
        except MechanismError as err:
            self.next_restart = now + self._backoff()
            self.failures += 1
            self.last_error = f"restart {self.restarts} failed: {err}"
            self._kill_daemon()
            self.log.error("jupyter-tfgpu: MPS: %s", self.last_error)
            return
        self.state, self.next_restart = "running", None
        self.log.warning("jupyter-tfgpu: the MPS control daemon runs again (PID %s)", self.pid)
        self.on_up()

    def stop(self) -> None:
        """Quit the daemon (forcing its servers after QUIT_SECONDS), kill what is left of it,
        remove both folders: nothing is left behind."""
        with self.lock:
            running = is_running(self.pid, self._pid_started)
            if running:
                try:
                    self.servers = self.control.server_pids()
                    self.control.quit(QUIT_SECONDS)
                except MpsUnreachable as err:
                    self.log.warning("jupyter-tfgpu: MPS: quit: %s", err)
            self._left.update(self.servers)
            self._kill_daemon(wait=QUIT_SECONDS if running else 0.0)
            for pid in self._left:
                _kill_if_mps(pid)
            self._left.clear()
            self.state = "stopped"
            for folder in (self.pipe_dir, self.log_dir):
                shutil.rmtree(folder, ignore_errors=True)
            try:
                self.runtime_dir.rmdir()  # the mechanism's own; left when another put files in
            except OSError:
                pass

    def _kill_daemon(self, wait: float = 0.0) -> None:
        """Wait ``wait`` seconds at most for the daemon to go, then SIGKILL it if it has not."""
        deadline = time.monotonic() + wait
        while is_running(self.pid, self._pid_started) and time.monotonic() < deadline:
            self.sleep(0.05)
        if is_running(self.pid, self._pid_started) and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    # -- clients ---------------------------------------------------------------------------------

    def terminate_clients(self, pids: Sequence[int]) -> list[str]:
        """``terminate_client`` each of ``pids`` that is a client of the daemon's servers, so
        signals reach it safely (NVIDIA: signalling an MPS client is unsupported); what failed."""
        with self.lock:
            if self.state != "running":
                return []
            failed = []
            wanted = set(pids)
            for server in self.control.server_pids():
                for client in self.control.client_pids(server):
                    if client in wanted:
                        said = self.control.terminate_client(server, client)
                        if said is not None:
                            failed.append(f"client {client} of server {server}: {said}")
            return failed

    # -- views -----------------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """What GET status shows of it (read without blocking: the attributes as they are)."""
        next_in = None
        if self.state == "restarting" and self.next_restart is not None:
            next_in = max(0.0, round(self.next_restart - self.clock(), 1))
        return {
            "pid": self.pid if self.state == "running" else None,
            "servers": ",".join(map(str, self.servers)) or None,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "next_restart_in_s": next_in,
            "pipe_directory": str(self.pipe_dir),
            "pipe_directory_outside_runtime": self.pipe_outside,
            "log_directory": str(self.log_dir),
            "default_limit_mb": self.applied_mb,
            "default_limit_read_back": ", ".join(f"{d}={s}" for d, s in self.shown.items()) or None,
            "limit_changes": APPLIES_TO,
        }


def _kill_if_mps(pid: int) -> None:
    """SIGKILL a leftover MPS server of this user (checked by name: the PID may be reused)."""
    try:
        proc = psutil.Process(pid)
        if proc.name().startswith("nvidia-cuda-mps") and proc.uids().real == os.getuid():
            proc.kill()
    except psutil.Error:
        pass

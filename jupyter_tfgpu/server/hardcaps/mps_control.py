"""Talking to an MPS control daemon through NVIDIA's front end, ``nvidia-cuda-mps-control``.

The wire protocol between the front end and the daemon is NVIDIA's and undocumented, so the
binary is the only interface: commands on its stdin, one per line, answers on its stdout, one
process per call (nvidia-cuda-mps-control(1)). Its exit status says whether a daemon answered,
not whether a command was accepted: a rejected command prints an error and exits 0. So what is
set is read back, and a getter's answer is parsed loosely (NVIDIA does not document its form;
a limit of at least 1 GiB is said to read back in whole GiB). Every call blocks: never on the
event loop.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Mapping

from jupyter_tfgpu.gpu.backend import MiB
from jupyter_tfgpu.server.hardcaps.host import MPS_PIPE_ENV, read_small
from jupyter_tfgpu.server.hardcaps.mechanism import MechanismError

LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
PID_FILE = "nvidia-cuda-mps-control.pid"  # the daemon writes its PID there, in the pipe folder
# How long one front-end call may take: a daemon that answers slower is taken as not answering.
COMMAND_SECONDS = 10.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1 / MiB, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}  # in MiB


class MpsUnreachable(MechanismError):
    """No daemon answered: none listens on the pipe folder, it died, or it did not answer in
    time."""


def limit_mib(text: str | None) -> int | None:
    """A limit as a getter prints it (``4G``, ``900M``) in MiB; None for anything else."""
    found = _SIZE.match(text or "")
    if found is None:
        return None
    number, unit = found.groups()
    return int(float(number) * _UNITS[unit.upper()])


def read_back_matches(asked_mib: int, shown: str) -> bool:
    """Whether a getter's answer is the limit set: exactly, or that limit in whole GiB."""
    got = limit_mib(shown)
    return got is not None and asked_mib - 1024 < got <= asked_mib


@dataclass(frozen=True)
class MpsControl:
    """The front end for the daemon of one pipe folder."""

    binary: str  # nvidia-cuda-mps-control, as found on the server's PATH
    pipe_dir: str
    log_dir: str | None = None  # the daemon's log folder (starting one needs it)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)  # the server's, live
    timeout: float = COMMAND_SECONDS

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a front end (or daemon) for this pipe folder."""
        env = {**self.environ, MPS_PIPE_ENV: self.pipe_dir, **extra}
        if self.log_dir is not None:
            env[LOG_ENV] = self.log_dir
        return env

    def _call(self, commands: tuple[str, ...], timeout: float | None) -> subprocess.CompletedProcess:
        wait = self.timeout if timeout is None else timeout
        try:
            return subprocess.run(
                [self.binary],
                input="".join(f"{command}\n" for command in commands),
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=wait,
            )
        except subprocess.TimeoutExpired as err:
            raise MpsUnreachable(f"the MPS control daemon did not answer within {wait:g} s") from err
        except OSError as err:
            raise MpsUnreachable(f"{self.binary} could not be run: {err}") from err

    def run(self, *commands: str, timeout: float | None = None) -> str:
        """Send ``commands`` to the daemon; its answers (stdout). MpsUnreachable when no daemon
        answered; a rejected command is an answer (its error text)."""
        done = self._call(commands, timeout)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip() or "no message"
            raise MpsUnreachable(
                f"no MPS control daemon answered ({os.path.basename(self.binary)} exited with "
                f"{done.returncode}: {said})"
            )
        return done.stdout

    def start_daemon(self, visible: list[str], timeout: float = 30.0) -> None:
        """``-d``: start the daemon on the GPUs ``visible`` (UUIDs); returns once it listens."""
        env = self.env(CUDA_VISIBLE_DEVICES=",".join(visible))
        # Its output goes to a file, not a pipe: the daemon it leaves running could keep a pipe
        # open, and waiting for the pipe's end would then never end. In a session of its own,
        # so a signal to the server's process group does not reach it.
        with tempfile.TemporaryFile() as output:
            try:
                done = subprocess.run(
                    [self.binary, "-d"], env=env, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True,
                )  # fmt: skip
            except subprocess.TimeoutExpired as err:
                raise MechanismError(f"{self.binary} -d did not return within {timeout:g} s") from err
            except OSError as err:
                raise MechanismError(f"{self.binary} could not be run: {err}") from err
            output.seek(0)
            said = output.read(4096).decode("utf-8", "replace").strip() or "no message"
        if done.returncode != 0:
            raise MechanismError(f"{self.binary} -d exited with {done.returncode}: {said}")

    def daemon_pid(self) -> int | None:
        """The daemon's PID from its pid file; None without one."""
        # The pipe folder is in every client's environment: read its pid file without waiting
        try:
            return int(read_small(os.path.join(self.pipe_dir, PID_FILE), 32).strip())
        except ValueError:
            return None

    def server_pids(self) -> list[int]:
        """The PIDs of the daemon's MPS servers (``get_server_list``)."""
        return _pids(self.run("get_server_list"))

    def client_pids(self, server: int) -> list[int]:
        """The PIDs of one server's clients (``get_client_list``)."""
        return _pids(self.run(f"get_client_list {server}"))

    def terminate_client(self, server: int, client: int) -> str | None:
        """``terminate_client``: None when done ("0"), else the daemon's answer."""
        said = self.run(f"terminate_client {server} {client}").strip()
        return None if said == "0" else said or "no answer"

    def set_default_limit(self, device: str, mib: int) -> str:
        """The default pinned memory limit of every client of servers started afterwards, read
        back; the getter's answer. MechanismError when the daemon did not take it."""
        said = self.run(
            f"set_default_device_pinned_mem_limit {device} {mib}M",
            f"get_default_device_pinned_mem_limit {device}",
        ).strip()
        shown = said.splitlines()[-1] if said else ""
        if not read_back_matches(mib, shown):
            raise MechanismError(
                f"the MPS daemon did not take a default limit of {mib}M for {device}: {said!r}"
            )
        return shown

    def set_server_limit(self, server: int, device: str, mib: int) -> None:
        """The pinned memory limit of clients that connect to a running server from now on."""
        said = self.run(f"set_device_pinned_mem_limit {server} {device} {mib}M").strip()
        if said:
            raise MechanismError(f"the MPS daemon refused a limit for server {server}: {said!r}")

    def default_limit(self, device: str) -> str:
        """The default pinned memory limit for ``device`` as the daemon prints it."""
        return self.run(f"get_default_device_pinned_mem_limit {device}").strip()

    def default_thread_percentage(self) -> str:
        """The default active thread percentage as the daemon prints it."""
        return self.run("get_default_active_thread_percentage").strip()

    def quit(self, seconds: float) -> int:
        """``quit -t seconds``: stop the daemon and its servers, forcing them after ``seconds``
        (a plain quit waits for every client). The front end's exit status: 0 when every server
        exited gracefully, else non-zero (also when no daemon answered)."""
        return self._call((f"quit -t {seconds:g}",), seconds + self.timeout).returncode


def _pids(text: str) -> list[int]:
    """The PIDs of a list answer, one per line; lines that are not a PID are left out."""
    return [int(word) for word in text.split() if word.isdigit()]

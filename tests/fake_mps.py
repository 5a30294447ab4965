"""Drive the fake ``nvidia-cuda-mps-control`` (``tests/fake_mps_bin/``) from tests.

``put_on_path`` makes the fake the binary a server (and its kernels) find on PATH. A
``FakeMpsDaemon`` reads what a daemon in one pipe folder keeps (its state file, its pid file)
and works its test hooks: kill it as a crash would, make it slow, make a process its client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

BIN = Path(__file__).resolve().parent / "fake_mps_bin"
CONTROL = BIN / "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
STATE = "fake-mps-state.json"
SLOW = "fake-mps-slow"


def put_on_path(monkeypatch) -> None:
    """Put the fake MPS binaries first on PATH for this test (and the servers it starts)."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fake_mps_processes() -> list[int]:
    """PIDs of every fake MPS daemon and server of this machine (running as this user)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(BIN).encode() in part for part in cmdline) and alive(int(entry)):
            found.append(int(entry))
    return found


class FakeMpsDaemon:
    """The fake daemon of one pipe folder, as a test sees it."""

    def __init__(self, pipe_dir: str | Path) -> None:
        self.pipe_dir = Path(pipe_dir)

    def control(self, commands: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the front end with ``commands`` on stdin, as an admin would."""
        full = {**os.environ, **(env or {}), "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir)}
        return subprocess.run(
            [str(CONTROL)], input=commands, env=full, capture_output=True, text=True, timeout=30
        )

    def state(self) -> dict[str, Any]:
        """What the daemon keeps: defaults, servers and clients, terminations, commands."""
        return json.loads((self.pipe_dir / STATE).read_text())

    @property
    def pid(self) -> int | None:
        """The daemon's PID from its pid file; None without one."""
        try:
            return int((self.pipe_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        """Whether the daemon of the pid file is alive."""
        return self.pid is not None and alive(self.pid)

    def kill(self, timeout: float = 10) -> int:
        """SIGKILL the daemon, as a crash would; its files stay. Returns its PID."""
        pid = self.pid
        assert pid is not None, "no daemon to kill"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while alive(pid):
            assert time.monotonic() < deadline, "the killed daemon did not go"
            time.sleep(0.01)
        return pid

    def slow(self, seconds: float) -> None:
        """Delay each of its answers by ``seconds`` (0 to stop)."""
        path = self.pipe_dir / SLOW
        if seconds:
            path.write_text(str(seconds))
        else:
            path.unlink(missing_ok=True)

    def connect(self, pid: int, env: dict[str, str] | None = None) -> int:
        """Make process ``pid`` a client, as its first CUDA call would with ``env`` (its MPS
        variables); returns its server's PID."""
        line = json.dumps({"pid": pid, "env": env or {}})
        done = self.control(f"fake_connect {line}\n")
        assert done.returncode == 0 and done.stdout.strip().isdigit(), done
        return int(done.stdout.strip())

    def servers(self) -> list[int]:
        """The PIDs of its servers, from its state."""
        return [server["pid"] for server in self.state()["servers"]]

    def clients(self) -> dict[int, dict[str, Any]]:
        """Its clients by PID: the limits each got and the MPS variables it started with."""
        return {c["pid"]: c for s in self.state()["servers"] for c in s["clients"]}


# What a kernel runs to become a client of the daemon its environment names, as a CUDA
# framework's first call would: prints the server's PID.
CONNECT_FROM_KERNEL = """
import json, os, subprocess
line = json.dumps({"pid": os.getpid(), "env": dict(os.environ)})
done = subprocess.run(["nvidia-cuda-mps-control"], input=f"fake_connect {line}\\n",
                      capture_output=True, text=True, timeout=30)
print(json.dumps(int(done.stdout.strip())))
"""

"""A real ``jupyter server`` process with its own config folder and log, for start-up tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

TOKEN = "fail-closed-test-token"
START_TIMEOUT = 90  # seconds a server may take to stop, or to answer, on a busy machine


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `jupyter server` subprocess with its own config folder and log."""

    def __init__(
        self,
        tmp_path: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ):
        """``launcher``: what follows the interpreter instead of ``-m jupyter_server``."""
        self.port = free_port()
        self.log = tmp_path / "server.log"
        self.config_dir = tmp_path / "config"
        root = tmp_path / "root"
        root.mkdir()
        command = [
            sys.executable,
            *(launcher or ["-m", "jupyter_server"]),
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={TOKEN}",
            "--TFGPU.backend=simulated",
            *args,
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "TFGPU_"))}
        self.env.update(
            HOME=str(tmp_path / "home"),
            JUPYTER_CONFIG_DIR=str(self.config_dir),
            JUPYTER_DATA_DIR=str(tmp_path / "data"),
            JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
            **(env or {}),
        )
        self.command = command
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        """Start the process, its output going to the log."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, cwd=self.log.parent, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def exit_status(self) -> int:
        """Wait for the process to end by itself."""
        try:
            return self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server kept running:\n{self.text()[-3000:]}")

    def get(self, path: str) -> dict:
        """GET a JSON route with the token."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/{path}", headers={"Authorization": f"token {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def wait_until_serving(self) -> None:
        """Poll GET api/status until it answers; fail if the process ends first."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited:\n{self.text()[-3000:]}")
            try:
                self.get("api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer:\n{self.text()[-3000:]}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop the process if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def text(self) -> str:
        """What the server logged."""
        return self.log.read_text(errors="replace")


class Servers:
    """Makes servers in one folder; stops whatever still runs when the ``with`` block ends."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.made: list[Server] = []

    def __call__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> Server:
        """A server with ``args``, ``env``, and ``files`` written into its config folder."""
        server = Server(self.tmp_path, args, env, launcher)
        for name, text in (files or {}).items():
            path = server.config_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.made.append(server)
        return server

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.made:
            server.stop()


def critical_lines(log: str) -> list[str]:
    """The log's CRITICAL lines."""
    return [line for line in log.splitlines() if line.startswith("[C ")]

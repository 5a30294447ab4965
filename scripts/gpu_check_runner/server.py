"""The jupyter_server under check: a subprocess in throw-away folders, reached over HTTP."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BASE_URL = "/tfgpu-check/"
# Caps are enforced for the first server's whole run, with restarts: check (8) holds a capped
# kernel past this grace period and expects it left alone, and every capped kernel of checks (2)
# and (3) stays within its cap too (a kernel restarted under a check fails it).
ENFORCEMENT = "restart"
ENFORCEMENT_GRACE_S = 10.0
ENFORCED = (
    f"--TFGPU.enforcement={ENFORCEMENT}",
    f"--TFGPU.enforcement_grace={ENFORCEMENT_GRACE_S:g}",
)


class ApiError(RuntimeError):
    """An HTTP error answer from the server."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


class Server:
    """A `python -m jupyter_server` subprocess with jupyter-tfgpu, in throw-away folders."""

    def __init__(self, workdir: Path, backend: str, settings: tuple[str, ...] = ()):
        self.dir = workdir
        self.backend = backend
        self.settings = settings  # more command-line settings (a hard-caps mode, an admin cap)
        self.root = workdir / "root"
        self.runtime = workdir / "runtime"
        self.log_path = workdir / "server.log"
        self.token = secrets.token_hex(24)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Write config and kernelspec, start the server."""
        config, data = self.dir / "config", self.dir / "data"
        for folder in (
            self.root,
            self.runtime,
            config,
            data,
            self.dir / "home",
            self.dir / "ipython",
        ):
            folder.mkdir(parents=True, exist_ok=True)
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_tfgpu": True}}})
        )
        # Our own python3 kernelspec: the kernels must run this interpreter (the one with the
        # frameworks), whatever kernelspecs the machine has in its system folders.
        spec = data / "kernels" / "python3"
        spec.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "Python 3 (gpu-check)", "language": "python"})
        )
        env = dict(
            os.environ,
            HOME=str(self.dir / "home"),
            JUPYTER_CONFIG_DIR=str(config),
            JUPYTER_DATA_DIR=str(data),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            IPYTHONDIR=str(self.dir / "ipython"),
            PYTHONUNBUFFERED="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={BASE_URL}",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.allow_unauthenticated_access=False",
            f"--TFGPU.backend={self.backend}",
            "--TFGPU.sample_interval=0.5",
            "--TFGPU.process_interval=1.0",
            *self.settings,
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """One JSON request under base_url; raises ApiError on an HTTP error."""
        url = f"http://127.0.0.1:{self.port}{BASE_URL}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"token {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiError(method, path, err.code, err.read().decode("utf-8", "replace")) from None
        return json.loads(text) if text.strip() else None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll GET tfgpu/api/status until it answers."""
        end = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            try:
                return self.api("GET", "tfgpu/api/status", timeout=5)
            except (OSError, ApiError):
                if time.monotonic() > end:
                    raise TimeoutError(
                        f"the server did not answer within {timeout:.0f} s"
                    ) from None
                time.sleep(0.25)

    def stop(self) -> str:
        """Ask the server to shut down (it stops its kernels), then terminate, then kill."""
        if self.proc is None or self.proc.poll() is not None:
            return "not running"
        try:
            self.api("POST", "api/shutdown", timeout=10)
            self.proc.wait(20)
            return "shut down"
        except (OSError, ApiError, subprocess.TimeoutExpired):
            pass
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                return f"stopped with {sig.name}"
            except (OSError, subprocess.TimeoutExpired):
                continue
        return "could not be stopped"

    def log_tail(self, lines: int = 40) -> list[str]:
        """The end of the server's log (token masked)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line.replace(self.token, "<token>")[:240] for line in text.splitlines()[-lines:]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

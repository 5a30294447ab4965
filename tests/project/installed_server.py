"""A server run from another venv, as a site installs it: ports, environment, REST calls.

Shared by the tests that install the package into a fresh venv (binder, the release build).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

requests = pytest.importorskip("requests")

TOKEN = "tfgpu-binder-test-token"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bin_python(venv: Path) -> Path:
    """The venv's interpreter."""
    return venv / "bin" / "python"


def clean_env(home: Path, venv: Path) -> dict[str, str]:
    """This process's environment without its Jupyter, venv and Python path settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUPYTER", "JPY_", "TFGPU_", "PYTHON", "VIRTUAL_ENV", "IPYTHON"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / ".ipython"),
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


class Server:
    """A Jupyter server started from another venv, and its REST API."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, runtime: Path) -> None:
        self.url = url
        self.process = process
        self.log = log
        self.runtime = runtime

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the server with its token."""
        headers = {"Authorization": f"token {TOKEN}"}
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kwargs)

    def log_tail(self) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-6000:]

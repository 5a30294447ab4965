"""The end-to-end test's monitoring stack: real Jupyter servers, a real Prometheus scraping them.

Each Jupyter server is ``python -m jupyter_server`` in a subprocess, as one user
(``JUPYTERHUB_USER``), on the simulated backend, with a token and a non-root ``base_url``;
Prometheus is Debian's ``/usr/bin/prometheus`` with its storage in a temporary folder. Everything
listens on 127.0.0.1 on free ports, every wait has a deadline, and ``stop()`` ends each process
this module started (the servers' kernels included), by its PID.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] = str
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (OSError, urllib.error.URLError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.1)


def _stop_process(process: subprocess.Popen, grace: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class JupyterServer:
    """A jupyter_server with jupyter-tfgpu, run as ``user``."""

    user: str
    folder: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen | None = None
    kernel_pids: set[int] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        """As JupyterHub would give it."""
        return f"/user/{self.user}/"

    @property
    def url(self) -> str:
        """Where it answers."""
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    @property
    def log(self) -> Path:
        """Its stdout and stderr."""
        return self.folder / "server.log"

    def start(self, *args: str) -> None:
        """Start it in a subprocess; ``args`` go to the server."""
        for name in ("home", "root", "config", "data", "runtime"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("JUPYTER", "JPY_", "TFGPU_"))
        }
        env.update(
            HOME=str(self.folder / "home"),
            JUPYTER_CONFIG_DIR=str(self.folder / "config"),
            JUPYTER_DATA_DIR=str(self.folder / "data"),
            JUPYTER_RUNTIME_DIR=str(self.folder / "runtime"),
            JUPYTERHUB_USER=self.user,
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONDONTWRITEBYTECODE="1",
        )
        command = [
            sys.executable, "-m", "jupyter_server",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--ServerApp.token={self.token}",
            f"--ServerApp.base_url={self.base_url}",
            f"--ServerApp.root_dir={self.folder / 'root'}", "--ServerApp.open_browser=False",
            "--ServerApp.jpserver_extensions=jupyter_tfgpu=True", *args,
        ]  # fmt: skip
        if os.geteuid() == 0:
            command.append("--allow-root")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def log_tail(self) -> str:
        """The end of its log."""
        try:
            return f"--- {self.user}'s server log:\n" + self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call its API with its token; the answer, decoded from JSON (None when empty)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            data = answer.read()
        return json.loads(data) if data else None

    def metrics(self) -> str:
        """Its ``/metrics`` page, read with its token."""
        request = urllib.request.Request(
            self.url + "metrics", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.read().decode()

    def ready(self) -> bool:
        """Serving, with the extension loaded and the first sample taken."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.user}'s server exited\n{self.log_tail()}")
        return self.request("GET", "tfgpu/api/gpus").get("timestamp") is not None

    def serving(self) -> bool:
        """Serving (with or without the extension)."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.user}'s server exited\n{self.log_tail()}")
        return self.request("GET", "api/status") is not None

    def open_notebook(self, path: str) -> dict[str, Any]:
        """Open a notebook as JupyterLab does; its session (its kernel under ``kernel``)."""
        body = {"path": path, "name": path, "type": "notebook", "kernel": {"name": "python3"}}
        session = self.request("POST", "api/sessions", body)
        self.kernel_pids.update(self._kernel_processes())
        return session

    def run(self, kernel_id: str, code: str, timeout: float = 90) -> None:
        """Execute ``code`` in the kernel from outside the server, with jupyter_client."""
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient(
            connection_file=str(self.folder / "runtime" / f"kernel-{kernel_id}.json")
        )
        client.load_connection_file()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=timeout)
            errors: list[str] = []
            reply = client.execute_interactive(
                code,
                timeout=timeout,
                output_hook=lambda msg: (
                    errors.append(str(msg["content"].get("traceback")))
                    if msg["msg_type"] == "error"
                    else None
                ),
            )
            assert reply["content"]["status"] == "ok" and not errors, errors
        finally:
            client.stop_channels()

    def _kernel_processes(self) -> set[int]:
        if self.process is None:
            return set()
        try:
            return {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def stop(self) -> None:
        """Stop it (it shuts its kernels down); then any kernel of it still running."""
        if self.process is None:
            return
        self.kernel_pids.update(self._kernel_processes())
        _stop_process(self.process)
        for pid in self.kernel_pids:  # kernels run in sessions of their own
            try:
                process = psutil.Process(pid)
                if process.is_running():
                    process.kill()
            except psutil.NoSuchProcess:
                pass


class DcgmStandIn:
    """A fixed page in dcgm-exporter's exposition format, for the docs' queries that join with it.

    NVIDIA's exporter needs a GPU; this serves what it would say about the simulated GPUs, with
    its labels (``gpu``, ``UUID``, ``modelName``, ``Hostname``).
    """

    def __init__(self, gpus: list[dict[str, str]]):
        lines = [
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        ]
        for gpu in gpus:
            labels = ",".join(f'{k}="{v}"' for k, v in gpu.items())
            lines.append(f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} 37")
        body = ("\n".join(lines) + "\n").encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Prometheus:
    """Debian's Prometheus, its storage and config in ``folder``."""

    binary: Path
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Its web address."""
        return f"http://127.0.0.1:{self.port}/"

    def write_config(
        self, rules: dict[str, Any], servers: list[JupyterServer], extra_targets: dict[str, str]
    ) -> None:
        """prometheus.yml: every second, each server with its own token, the rules given."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "tfgpu-rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        scrapes = []
        for server in servers:
            token = self.folder / f"{server.user}-token"
            token.write_text(server.token)
            scrapes.append(
                {
                    "job_name": f"jupyter-{server.user}",
                    "metrics_path": f"{server.base_url}metrics",
                    "authorization": {"credentials_file": token.name},
                    "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
                }
            )
        for job, address in extra_targets.items():
            scrapes.append({"job_name": job, "static_configs": [{"targets": [address]}]})
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": ["tfgpu-rules.yaml"],
            "scrape_configs": scrapes,
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> None:
        """Start it on the config written."""
        (self.folder / "data").mkdir(exist_ok=True)
        with (self.folder / "prometheus.log").open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self) -> str:
        """The end of its log."""
        try:
            text = (self.folder / "prometheus.log").read_text(errors="replace")
            return "--- Prometheus's log:\n" + text[-4000:]
        except OSError:
            return ""

    def get(self, path: str, **params: str) -> Any:
        """GET one of its API's answers, decoded (HTTP errors answer JSON too)."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"Prometheus exited\n{self.log_tail()}")
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            if err.code in (400, 422, 503):
                return json.loads(err.read())
            raise

    def ready(self) -> bool:
        """Serving queries."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"Prometheus exited\n{self.log_tail()}")
        with urllib.request.urlopen(self.url + "-/ready", timeout=10) as answer:
            return answer.status == 200

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query's answer: ``status``, and ``data`` or ``error``."""
        return self.get("api/v1/query", query=expr)

    def values(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's series (labels, sorted) and their values; fails on an error."""
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in answer["data"]["result"]
        }

    def stop(self) -> None:
        """Stop it."""
        if self.process is not None:
            _stop_process(self.process)

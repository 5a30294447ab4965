"""Shared plumbing for the benchmark scripts: start serve_fake.py, call its REST API, run kernels.

Everything runs on 127.0.0.1, every wait is bounded in time, and every child process is ended
(SIGTERM, then SIGKILL) when its context exits. Stream clients are in ``_streams.py``, py-spy in
``_pyspy.py``.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVE_FAKE = HERE / "serve_fake.py"

sys.path.insert(0, str(HERE))
from serve_fake import free_port, percentile  # noqa: E402

__all__ = [
    "FakeServer", "call", "execute", "free_port", "machine", "percentile", "start_session",
    "stop_process",
]  # fmt: skip


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM this one child, wait a bounded time, then SIGKILL it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def machine() -> dict[str, Any]:
    """CPU model and core count of this host, and today's date (UTC)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


class FakeServer:
    """serve_fake.py in a subprocess, with a keep-alive HTTP connection for small reads."""

    def __init__(
        self,
        *,
        latency: bool = True,
        extra: list[str] | None = None,
        max_seconds: float = 1800,
        launcher: list[str] | None = None,
        wait_for_sample: bool = True,
    ):
        self.latency = latency
        self.wait_for_sample = wait_for_sample  # False: return as soon as the server listens
        self.extra = list(extra or [])  # ServerApp / TFGPU arguments
        self.launcher = list(launcher or [])  # serve_fake.py's own options (--mig 7, ...)
        self.info: dict[str, Any] = {}  # what serve_fake wrote to its ready file
        self.max_seconds = max_seconds
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/"
        self.headers = {"Authorization": f"token {self.token}"}
        self._dir = tempfile.TemporaryDirectory(prefix="tfgpu-bench-run-")
        self.log_path = Path(self._dir.name) / "server.log"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.started_at: float | None = None  # time.monotonic() when the process was started
        self.ready_at: float | None = None  # ... when its ready file was seen (it serves)
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> "FakeServer":
        ready = Path(self._dir.name) / "ready.json"
        cmd = [
            sys.executable,
            str(SERVE_FAKE),
            "--port", str(self.port),
            "--token", self.token,
            "--ready-file", str(ready),
            "--max-seconds", str(self.max_seconds),
        ]  # fmt: skip
        if not self.latency:
            cmd.append("--no-latency")
        cmd += [*self.launcher, "--", *self.extra]
        with open(self.log_path, "wb") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"serve_fake did not start; log:\n{self.log_tail()}")
            time.sleep(0.01)
        self.ready_at = time.monotonic()
        self.info = json.loads(ready.read_text())
        self.pid = self.info["pid"]
        # Wait (bounded) for the first sample, so every measurement starts from a sampling server.
        for _ in range(100 if self.wait_for_sample else 0):
            if self.get("tfgpu/api/gpus").get("timestamp") is not None:
                break
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is not None:
            stop_process(self.proc)
        self._dir.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request(self, path: str) -> tuple[int, bytes, float]:
        """GET ``path`` on the keep-alive connection: (status, body, seconds)."""
        for attempt in range(2):  # the server may have closed an idle keep-alive connection
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                started = time.perf_counter()
                self._conn.request("GET", "/" + path.lstrip("/"), headers=self.headers)
                response = self._conn.getresponse()
                body = response.read()
                return response.status, body, time.perf_counter() - started
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        """GET ``path`` and decode its JSON (raises on a non-200 answer)."""
        status, body, _ = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def nvml(self) -> dict[str, Any]:
        """The fake NVML's counters (launcher endpoint)."""
        return self.get("bench/nvml")


def call(server: FakeServer, method: str, path: str, body: Any = None, timeout: float = 60):
    """One request on a fresh connection (thread-safe): (status or error name, JSON or None, s)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    started = time.perf_counter()
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, "/" + path.lstrip("/"), body=data, headers=server.headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return response.status, decoded, time.perf_counter() - started
    except (OSError, http.client.HTTPException) as err:
        return type(err).__name__, None, time.perf_counter() - started
    finally:
        conn.close()


def start_session(server: FakeServer, notebook: str, timeout: float = 120) -> dict[str, Any]:
    """POST api/sessions for a notebook as JupyterLab does; the session (raises unless 201)."""
    body = {"path": notebook, "name": notebook, "type": "notebook", "kernel": {"name": "python3"}}
    status, session, _ = call(server, "POST", "api/sessions", body, timeout=timeout)
    if status != 201:
        raise RuntimeError(f"POST api/sessions: {status} {session}")
    return session


async def _execute(server: FakeServer, kernel_id: str, code: str, timeout: float) -> str:
    """Run ``code`` in a kernel over its websocket, as JupyterLab does; its stdout."""
    import asyncio
    import uuid
    from datetime import datetime, timezone

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    session = uuid.uuid4().hex
    url = f"{server.ws_url}api/kernels/{kernel_id}/channels?session_id={session}"
    deadline = time.monotonic() + timeout
    # tornado's own 20 s default would cut a slow handshake (a kernel busy starting) short.
    request = HTTPRequest(
        url, headers=server.headers, connect_timeout=timeout, request_timeout=timeout
    )
    ws = await asyncio.wait_for(websocket_connect(request), timeout)
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id, "msg_type": "execute_request", "username": "bench", "session": session,
        "date": datetime.now(timezone.utc).isoformat(), "version": "5.3",
    }  # fmt: skip
    content = {
        "code": code, "silent": False, "store_history": False, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": True,
    }  # fmt: skip
    message = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    await ws.write_message(json.dumps({**message, "channel": "shell", "buffers": []}))
    out: list[str] = []
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
            if raw is None:
                raise RuntimeError("kernel websocket closed")
            if not isinstance(raw, str):
                continue  # binary frames carry buffers; none of ours does
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, body = msg["msg_type"], msg["content"]
            if kind == "stream" and body.get("name") == "stdout":
                out.append(body["text"])
            elif kind == "error":
                raise RuntimeError("kernel code failed: " + "\n".join(body["traceback"])[-2000:])
            elif kind == "status" and body.get("execution_state") == "idle":
                return "".join(out)
    finally:
        ws.close()


def execute(server: FakeServer, kernel_id: str, code: str, timeout: float = 90) -> str:
    """Blocking ``_execute`` (its own event loop: callable from any thread)."""
    import asyncio

    return asyncio.run(_execute(server, kernel_id, code, timeout))

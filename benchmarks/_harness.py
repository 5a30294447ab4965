"""Shared plumbing for the benchmark scripts: start serve_fake.py, stream clients, read counters.

Everything runs on 127.0.0.1, every wait is bounded in time, and every child process is ended
(SIGTERM, then SIGKILL) when its context exits.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import platform
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVE_FAKE = HERE / "serve_fake.py"
STREAM_CLIENTS = HERE / "_stream_clients.py"

sys.path.insert(0, str(HERE))
from serve_fake import free_port, percentile  # noqa: E402

__all__ = [
    "FakeServer", "PySpy", "StreamClients", "call", "execute", "free_port", "machine",
    "percentile", "stalled_stream_client", "start_session", "stop_process",
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


def stalled_stream_client(server: FakeServer, timeout: float = 10) -> socket.socket:
    """Open tfgpu/api/stream on a raw socket, complete the websocket handshake, and never read
    again (the caller closes the socket). Its receive buffer is small, as a client's that stopped
    reading is full, so the server's writes stop completing after a few messages."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        headers = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items())
        sock.sendall(
            (
                f"GET /tfgpu/api/stream HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = sock.recv(1)  # byte by byte: nothing past the handshake is read
            if not chunk:
                raise RuntimeError("the server closed the stream during the handshake")
            head += chunk
        if head.split()[1:2] != [b"101"]:
            raise RuntimeError(f"stream handshake refused: {head[:200]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


class StreamClients:
    """N websocket clients on tfgpu/api/stream, in their own process so they do not skew timings."""

    def __init__(
        self,
        server: FakeServer,
        clients: int,
        *,
        pcie: int = 0,
        max_seconds: float = 600,
        classify: bool = False,
    ):
        self.server = server
        self.clients = clients
        self.pcie = pcie
        self.max_seconds = max_seconds
        self.classify = classify  # count each client's policy pushes and revisions too
        self.proc: subprocess.Popen | None = None
        self.summary: dict[str, Any] = {}
        self._lines: queue.Queue[str] = queue.Queue()

    def __enter__(self) -> "StreamClients":
        cmd = [
            sys.executable,
            str(STREAM_CLIENTS),
            "--url", self.server.ws_url + "tfgpu/api/stream",
            "--token", self.server.token,
            "--clients", str(self.clients),
            "--pcie", str(self.pcie),
            "--seconds", str(self.max_seconds),
        ]  # fmt: skip
        if self.classify:
            cmd.append("--classify")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        line = self._next_line(timeout=90)
        if not line.startswith("READY"):
            self.__exit__(None, None, None)
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"stream clients did not connect: {line!r}\n{err}")
        connected = int(line.split()[1])
        if connected != self.clients:
            self.__exit__(None, None, None)
            raise RuntimeError(f"only {connected} of {self.clients} websocket clients connected")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        for _ in range(100):  # the final summary line, if the process got to print it
            try:
                line = self._lines.get(timeout=0.05)
            except queue.Empty:
                break
            if line.startswith("{"):
                self.summary = json.loads(line)
        self.proc = None
        self._stderr.close()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())

    def _next_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    break
        return ""


# Frames every sample of the server passes through: left out of the top-frames list.
_SCAFFOLDING = (
    "<module>", "main (serve_fake", "launch_instance", "start_ioloop", "ServerApp.start ",
    "run_forever", "_run_once", "BaseAsyncIOLoop.start", "Thread._bootstrap", "Thread.run ",
    "Handle._run",
)  # fmt: skip


def _scaffolding(frame: str) -> bool:
    return any(mark in frame for mark in _SCAFFOLDING)


class PySpy:
    """py-spy recording one process (raw collapsed stacks, idle samples dropped), if installed."""

    def __init__(self, pid: int, out: Path, max_seconds: float = 600, rate: int = 200):
        self.pid, self.out, self.max_seconds, self.rate = pid, Path(out), max_seconds, rate
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PySpy":
        import shutil

        exe = shutil.which("py-spy")
        if exe is None:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                "--nonblocking", "--threads", "--format", "raw", "-o", str(self.out),
                "--duration", str(int(self.max_seconds)),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def summary(self, top: int = 12) -> dict[str, Any]:
        """Share of on-CPU samples by package (leaf frame) and the top inclusive frames."""
        import collections
        import re

        if not self.out.exists():
            return {"available": False}
        total = 0
        by_package: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in stack.split(";")[1:]]
            leaf = frames[-1] if frames else ""
            for package in ("jupyter_tfgpu", "fake_pynvml", "jupyter_server", "tornado", "asyncio", "logging"):
                if f"{package}/" in leaf or f"{package}." in leaf or f"/{package}" in leaf:
                    by_package[package] += n
                    break
            else:
                by_package["other"] += n
            for frame in set(frames):
                inclusive[frame] += n
        pct = lambda n: round(100 * n / total, 1) if total else None  # noqa: E731
        return {
            "samples": total,
            "self_pct_by_package": {k: pct(v) for k, v in by_package.most_common()},
            "top_inclusive_pct": {
                k: pct(v)
                for k, v in [kv for kv in inclusive.most_common() if not _scaffolding(kv[0])][:top]
            },
            "raw": str(self.out),
        }

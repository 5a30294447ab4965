"""Stream clients for the benchmark scripts: many websocket clients in their own process
(``_stream_clients.py``), and a client that completes the handshake and never reads again.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _harness import REPO, FakeServer, stop_process

STREAM_CLIENTS = Path(__file__).resolve().parent / "_stream_clients.py"


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

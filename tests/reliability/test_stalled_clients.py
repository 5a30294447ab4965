"""Websocket clients that stop reading: the server holds at most one message for each, skips them
to the latest snapshot, closes those too far behind, and keeps nothing for them once closed.

The integration test runs real stalled clients (a raw socket that completes the websocket
handshake, then never reads) against a real server with 64 simulated GPUs sampled 10 times a
second, and asserts on the server's own accounting of what each client has pending.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest
from tornado.websocket import WebSocketClosedError

from jupyter_tfgpu.server.api.backpressure import CLOSE_CODE, STALL_SECONDS, ClientOutput
from tests.kernel_helpers import poll

STALLED = 5


@pytest.fixture
def tfgpu_config():
    """64 simulated GPUs, sampled 10 times a second: a stalled client falls behind fast."""
    return {
        "backend": "simulated",
        "sample_interval": 0.1,
        "history_seconds": 60,
        "simulated_gpus": [{"name": "Simulated H100", "memory_gb": 80, "count": 64}],
    }


@pytest.fixture
def tfgpu(jp_serverapp):
    """The extension's services in the running server."""
    return jp_serverapp.web_app.settings["tfgpu_services"]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def stalled_client(port: int, base_url: str, auth_header: dict[str, str]) -> socket.socket:
    """Open the stream, complete the websocket handshake, and never read again.

    The receive buffer is made small, as a client's that stopped reading is full: the server's
    writes then stop completing after a few messages instead of after megabytes."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    headers = "".join(f"{name}: {value}\r\n" for name, value in auth_header.items())
    request = (
        f"GET {base_url}tfgpu/api/stream HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
        assert chunk, "the server closed the connection during the handshake"
        head += chunk
    assert head.split()[1] == b"101", head
    return sock


async def test_stalled_clients_hold_one_message_each_and_are_closed_when_too_far_behind(
    jp_http_port, jp_base_url, jp_auth_header, jp_ws_fetch, tfgpu
):
    """Five clients stop reading while snapshots keep coming: each holds at most one message
    on the server, skipping to the latest; a reading client is served all along; once their
    pending write is older than the stall limit they are closed and leave nothing behind."""
    # Given the stream's clients counted on a clock the test moves, and what is subscribed
    clients = tfgpu.stream.clients
    clock = clients.clock = FakeClock()
    subscribers = len(tfgpu.sampler._subscribers)  # the sampler has no public count
    resends = len(tfgpu.stream._resend)

    # When five clients open the stream and stop reading, and one client keeps reading
    stalled = [await stalled_client(jp_http_port, jp_base_url, jp_auth_header) for _ in range(STALLED)]
    reader = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        # Then, while many snapshots come due for each stalled client, one message stays pending
        async def far_behind():
            outputs = list(clients)
            behind = [o for o in outputs if o.in_flight and o.skipped >= 20]
            return len(behind) == STALLED and behind

        behind = await poll(far_behind, timeout=60)
        for output in behind:
            assert output.pending_bytes <= output.largest_bytes
        assert clients.pending_bytes() <= sum(o.largest_bytes for o in clients)
        # And the reading client is still served
        for _ in range(3):
            assert await asyncio.wait_for(reader.read_message(), 10)

        # When their pending write has waited past the stall limit
        clock.now += STALL_SECONDS + 1

        # Then each stalled client is closed, saying why, at the next snapshot
        async def closed():
            return all(o.closed_because for o in behind)

        await poll(closed)
        assert all(o.closed_because.startswith("too far behind") for o in behind)

        # And once closed, nothing is kept for them: no output, no subscription
        async def forgotten():
            return not any(o in set(clients) for o in behind)

        await poll(forgotten, timeout=30)  # tornado waits 5 s for a closing client's answer
        assert len(clients) == 1  # the reading client
        assert len(tfgpu.sampler._subscribers) == subscribers + 1
        assert len(tfgpu.stream._resend) == resends + 1
    finally:
        reader.close()
        for sock in stalled:
            sock.close()

    # And when the reading client closes too, the stream keeps nothing at all
    async def all_gone():
        return len(clients) == 0 and len(tfgpu.sampler._subscribers) == subscribers

    await poll(all_gone)
    assert clients.pending_bytes() == 0


# -- ClientOutput alone, with a fake connection --------------------------------------------------


class FakeConnection:
    """Records writes; each returns a Future the test completes, as a socket drains."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.futures: list[asyncio.Future] = []
        self.closed: tuple[int, str] | None = None
        self.gone = False

    def write(self, data: bytes) -> asyncio.Future:
        if self.gone:
            raise WebSocketClosedError()
        self.written.append(data)
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def drained(connection: FakeConnection) -> None:
    """The last write reached the socket (its done callbacks run on the loop)."""
    connection.futures[-1].set_result(None)
    await asyncio.sleep(0)


async def test_one_message_in_flight_and_only_the_latest_is_made():
    """While a message is in flight, newer ones wait as one; the one sent is made when sent."""
    # Given a client's output, and messages numbered as they are made
    connection, clock = FakeConnection(), FakeClock()
    output = ClientOutput(connection.write, connection.close, clock=clock)
    made = []

    def make() -> str:
        made.append(len(made))
        return f"message {made[-1]}"

    # When one message is sent, then ten more while it is in flight
    for _ in range(11):
        output.send(make)

    # Then only the first was made and written; the others wait as one, not made yet
    assert connection.written == [b"message 0"] and made == [0]
    assert output.in_flight and output.pending_bytes == len(b"message 0")
    assert output.skipped == 9
    # When the first is written, the latest is made and sent, and nothing is pending after it
    await drained(connection)
    assert connection.written == [b"message 0", b"message 1"]
    await drained(connection)
    assert not output.in_flight and output.pending_bytes == 0 and output.sent == 2


async def test_a_client_stalled_past_the_limit_is_closed_with_a_code_and_reason():
    """A write pending longer than STALL_SECONDS closes the client at the next message due."""
    # Given a client whose first message is never written
    connection, clock = FakeConnection(), FakeClock()
    output = ClientOutput(connection.write, connection.close, clock=clock)
    output.send(lambda: "first")

    # When messages come due within the limit, nothing happens
    clock.now += STALL_SECONDS
    output.send(lambda: "second")
    assert connection.closed is None
    # When one comes due past it, the client is closed, saying why
    clock.now += 1
    output.send(lambda: "third")
    assert connection.closed is not None
    code, reason = connection.closed
    assert code == CLOSE_CODE and reason == output.closed_because
    assert "too far behind" in reason
    # And nothing more is made or written for it, also when its write completes
    output.send(lambda: pytest.fail("made for a closed client"))
    await drained(connection)
    assert connection.written == [b"first"]


async def test_a_closed_connection_stops_the_output():
    """A write that fails (the client went away) leaves nothing pending and sends nothing more."""
    # Given a client with one message in flight and one due
    connection = FakeConnection()
    output = ClientOutput(connection.write, connection.close, clock=FakeClock())
    output.send(lambda: "first")
    output.send(lambda: "second")
    # When the connection closes under the write
    connection.futures[-1].set_exception(WebSocketClosedError())
    await asyncio.sleep(0)
    # Then nothing is pending and later messages are not made
    assert not output.in_flight and output.pending_bytes == 0
    assert output.closed_because == "closed by the client"
    output.send(lambda: pytest.fail("made for a closed client"))
    assert connection.written == [b"first"]

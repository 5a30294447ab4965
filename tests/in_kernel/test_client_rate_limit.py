"""The kernel's client and a server that limits it (429): a sentence saying when to try again, and
no request sent again before then, so the panels' loops back off instead of hammering.

A small local HTTP server answers as jupyter-tfgpu does over its limit; the client's clock is
injected, so nothing waits.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jupyter_tfgpu.in_kernel.client import RateLimited, ServerClient

LIMIT = "too many policy changes: at most 30 per 60 s per kernel"


class LimitingServer(BaseHTTPRequestHandler):
    """Answers every request with the server's 429; counts what it was sent."""

    requests: list[str] = []

    def _refuse(self) -> None:
        LimitingServer.requests.append(f"{self.command} {self.path}")
        body = json.dumps({"message": LIMIT, "reason": "too many policy changes"}).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _refuse

    def log_message(self, *args) -> None:
        """Quiet."""


@pytest.fixture
def server_url():
    """The URL of a server that refuses everything with 429 and ``Retry-After: 7``."""
    LimitingServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), LimitingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/base/"
    finally:
        server.shutdown()
        server.server_close()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_429_says_the_limit_and_when_to_try_again(server_url):
    """The server's sentence, then when one request fits again, from Retry-After."""
    # Given a client of a server over its limit
    client = ServerClient(server_url, "token", clock=FakeClock())
    # When it sets the policy
    with pytest.raises(RateLimited) as refused:
        client.set_policy({"memory_growth": True})
    # Then the error says the limit and when to try again
    assert str(refused.value) == f"{LIMIT}; try again in 7 s"
    assert refused.value.retry_after == 7 and refused.value.status == 429
    assert refused.value.kind == "rate_limited"


def test_the_same_request_is_not_sent_again_before_retry_after(server_url):
    """A loop that asks again within Retry-After is answered by the client itself, saying how
    long is left; other requests still go out; after it, the request is sent again."""
    # Given a client whose policy write was refused for 7 s
    clock = FakeClock()
    client = ServerClient(server_url, "token", clock=clock)
    with pytest.raises(RateLimited):
        client.set_policy({"memory_growth": True})
    # When it tries again 3 s later
    clock.now += 3
    with pytest.raises(RateLimited) as again:
        client.set_policy({"memory_growth": True})
    # Then the server was not asked again, and the error says what is left
    assert LimitingServer.requests == ["PUT /base/tfgpu/api/kernel/policy"]
    assert str(again.value).endswith("try again in 4 s")
    # And another route is still asked
    with pytest.raises(RateLimited):
        client.status()
    assert len(LimitingServer.requests) == 2
    # When the wait is over, the request goes out again
    clock.now += 4
    with pytest.raises(RateLimited):
        client.set_policy({"memory_growth": True})
    assert LimitingServer.requests[-1] == "PUT /base/tfgpu/api/kernel/policy"
    assert len(LimitingServer.requests) == 3

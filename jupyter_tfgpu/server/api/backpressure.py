"""Bounded output for websocket clients: a client that stops reading costs one message, not more.

Tornado's ``write_message`` queues whatever it is given: a client that stops reading (a laptop
closed on a bad network) would have the server buffer every snapshot for it, without end. A
client's output here holds at most one message in flight (written, its Future not done). While
one is, a newer message only marks that one is due; it is made, from the latest state, once the
pending write completes ("skip to the latest"). A client whose pending write has not completed
for ``STALL_SECONDS`` is closed (code 1013, "try again later") when the next message comes due.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tornado.websocket import WebSocketClosedError

from jupyter_tfgpu.server.stream import ClientOutputs

# How long one message may stay unwritten before the client counts as gone. A slow but live
# client writes a stream message (tens of KiB with 64 GPUs) within seconds; jupyter_server's own
# ping timeout (90 s by default) comes later and only closes clients that stopped answering.
STALL_SECONDS = 45.0
# "Try Again Later" (RFC 6455 registry): a client that reconnects is served from the latest.
CLOSE_CODE = 1013


class ClientOutput:
    """One websocket client's output: at most one message in flight, at most one due."""

    def __init__(
        self,
        write: Callable[[bytes], Any],
        close: Callable[[int, str], None],
        clock: Callable[[], float] = time.monotonic,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self._write = write  # returns a Future done once the message is written to the socket
        self._close = close
        self._clock = clock
        self.stall_seconds = stall_seconds
        self._due: Callable[[], str | bytes] | None = None
        self._in_flight = False
        self._since = 0.0  # when the message in flight was written
        self.pending_bytes = 0  # bytes handed to tornado and not yet written to the socket
        self.largest_bytes = 0  # the largest message handed to tornado
        self.sent = 0  # messages handed to tornado
        self.skipped = 0  # messages replaced by a newer one before they were made
        self.closed_because: str | None = None

    @property
    def in_flight(self) -> bool:
        """Whether a written message has not reached the socket yet."""
        return self._in_flight

    def send(self, make: Callable[[], str | bytes]) -> None:
        """Send ``make()`` now, or, while a message is in flight, once it is written (only the
        last ``make`` given by then is called)."""
        if self.closed_because is not None:
            return
        if not self.in_flight:
            self._send_now(make)
            return
        if self._due is not None:
            self.skipped += 1
        self._due = make
        stalled = self._clock() - self._since
        if stalled > self.stall_seconds:
            self.closed_because = f"too far behind: no message written for {stalled:.0f} s"
            self._due = None
            self._close(CLOSE_CODE, self.closed_because)

    def _send_now(self, make: Callable[[], str | bytes]) -> None:
        message = make()
        data = message.encode() if isinstance(message, str) else message
        try:
            future = self._write(data)
        except WebSocketClosedError:
            self.closed_because = "closed by the client"
            return
        self.sent += 1
        self._in_flight = True
        self.pending_bytes = len(data)
        self.largest_bytes = max(self.largest_bytes, len(data))
        self._since = self._clock()
        future.add_done_callback(self._written)

    def _written(self, future: Any) -> None:
        self._in_flight = False
        self.pending_bytes = 0
        if future.cancelled() or future.exception() is not None:
            self.closed_because = self.closed_because or "closed by the client"
            self._due = None
            return
        due, self._due = self._due, None
        if due is not None and self.closed_because is None:
            self._send_now(due)


class BoundedOutputMixin:
    """For a websocket handler: ``send_latest(make)`` instead of ``write_message``, so that a
    client that stops reading holds one message and is closed when too far behind.

    Put it before tornado's ``WebSocketHandler`` among the bases; ``open`` and ``on_close`` of the
    handler call ``super()``. ``client_outputs()`` names where the clients are counted.
    """

    output: ClientOutput | None = None

    def client_outputs(self) -> ClientOutputs | None:
        """Where this handler's clients are counted (None: nowhere)."""
        return None

    def open(self, *args: Any, **kwargs: Any) -> Any:
        """Make this client's output before anything is sent."""
        outputs = self.client_outputs()
        self.output = ClientOutput(
            self._write_bytes,
            self.close,  # type: ignore[attr-defined]
            clock=outputs.now if outputs is not None else time.monotonic,
        )
        if outputs is not None:
            outputs.add(self.output)
        return super().open(*args, **kwargs)  # type: ignore[misc]

    def send_latest(self, make: Callable[[], str | bytes]) -> None:
        """Send ``make()`` to this client now or when its pending message is written."""
        if self.output is not None:
            self.output.send(make)

    def _write_bytes(self, data: bytes) -> Any:
        # bytes as a text frame: tornado sends them as they are, without encoding them again
        return self.write_message(data)  # type: ignore[attr-defined]

    def on_close(self) -> None:
        """Stop counting this client."""
        outputs = self.client_outputs()
        if outputs is not None and self.output is not None:
            outputs.discard(self.output)
        super().on_close()  # type: ignore[misc]

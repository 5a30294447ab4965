"""The websocket stream's message: a snapshot's GPU JSON plus the kernel summary, made once;
policy pushes coalesced; the open clients' output, counted (the handler bounds each one's, in
``api/backpressure.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from jupyter_tfgpu.policy.changes import PolicyChanges

if TYPE_CHECKING:
    from jupyter_tfgpu.server.api.backpressure import ClientOutput

# A few recent snapshots: a client that opens sends the latest one, which the others were
# usually sent already.
CACHED_SNAPSHOTS = 4
# Seconds between two pushes of policy changes: a burst of changes (a kernel looping on its
# policy, a script writing many) reaches each view at most 4 times a second, and the last push
# of a burst always carries the latest revision. Views need the latest revision, not every one.
PUSH_INTERVAL = 0.25


class ClientOutputs:
    """Every open client's output (for accounting); their stall clock, which tests replace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._outputs: set[ClientOutput] = set()

    def now(self) -> float:
        """The clock's time (read through here, so a replaced clock reaches open clients)."""
        return self.clock()

    def add(self, output: ClientOutput) -> None:
        """A client opened."""
        self._outputs.add(output)

    def discard(self, output: ClientOutput) -> None:
        """A client closed."""
        self._outputs.discard(output)

    def __iter__(self):
        return iter(list(self._outputs))

    def __len__(self) -> int:
        return len(self._outputs)

    def pending_bytes(self) -> int:
        """Bytes written to every client and not yet on their sockets."""
        return sum(output.pending_bytes for output in list(self._outputs))


class StreamMessages:
    """Makes each snapshot's stream message once and serves it to every client."""

    def __init__(
        self,
        kernel_summary: Callable[[], list[dict[str, Any]]],
        policy_changes: PolicyChanges | None = None,
        clock: Callable[[], float] | None = None,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        self._kernel_summary = kernel_summary
        # The event loop's time and timers unless injected (tests drive them).
        self.clock = clock
        self.call_later = call_later
        self._last_push: float | None = None
        self._push_scheduled = False
        self._policy_changes = policy_changes or PolicyChanges()
        # (id(snapshot), policy revision) -> (snapshot, message); the snapshot is kept so that
        # its id is not reused
        self._cache: OrderedDict[tuple[int, int], tuple[Any, str]] = OrderedDict()
        self._resend: list[Callable[[], None]] = []
        # The open stream clients' output (what each has pending), counted by the handlers.
        self.clients = ClientOutputs()

    def message(self, snapshot: Any) -> str:
        """GET gpus's JSON for this snapshot with ``"kernels"`` and ``"policies"`` added."""
        key = (id(snapshot), self._policy_changes.revision)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        # Spliced, not re-encoded: the snapshot's text was made once when it was taken.
        text = (
            snapshot.text[:-1]
            + ',"kernels":'
            + json.dumps(self._kernel_summary())
            + ',"policies":'
            + json.dumps(self._policy_changes.to_json())
            + "}"
        )
        self._cache[key] = (snapshot, text)
        while len(self._cache) > CACHED_SNAPSHOTS:
            self._cache.popitem(last=False)
        return text

    def on_policy_change(self, resend: Callable[[], None]) -> Callable[[], None]:
        """Call ``resend()`` (on the event loop) when a policy changed; returns the undo."""
        self._resend.append(resend)
        return lambda: self._resend.remove(resend) if resend in self._resend else None

    def policies_changed(self) -> None:
        """A policy changed: every client gets the latest message again, at once unless a push
        went out less than PUSH_INTERVAL ago; then once that interval has passed (event loop)."""
        if self._push_scheduled:
            return  # the scheduled push reads the revision when it goes out: this one included
        now = self._now()
        wait = 0.0 if self._last_push is None else self._last_push + PUSH_INTERVAL - now
        if wait <= 0:
            self._push(now)
            return
        self._push_scheduled = True
        call_later = self.call_later or asyncio.get_running_loop().call_later
        call_later(wait, self._scheduled_push)

    def _scheduled_push(self) -> None:
        self._push_scheduled = False
        self._push(self._now())

    def _push(self, now: float) -> None:
        self._last_push = now
        for resend in list(self._resend):
            resend()

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

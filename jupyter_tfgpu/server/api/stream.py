"""The websocket stream's message: a snapshot's GPU JSON plus the kernel summary, made once."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Callable

from jupyter_tfgpu.policy.changes import PolicyChanges

# A few recent snapshots: a client that opens sends the latest one, which the others were
# usually sent already.
CACHED_SNAPSHOTS = 4


class StreamMessages:
    """Makes each snapshot's stream message once and serves it to every client."""

    def __init__(
        self,
        kernel_summary: Callable[[], list[dict[str, Any]]],
        policy_changes: PolicyChanges | None = None,
    ) -> None:
        self._kernel_summary = kernel_summary
        self._policy_changes = policy_changes or PolicyChanges()
        # (id(snapshot), policy revision) -> (snapshot, message); the snapshot is kept so that
        # its id is not reused
        self._cache: OrderedDict[tuple[int, int], tuple[Any, str]] = OrderedDict()
        self._resend: list[Callable[[], None]] = []

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
        """A policy changed: every client gets the latest message again at once (event loop)."""
        for resend in list(self._resend):
            resend()

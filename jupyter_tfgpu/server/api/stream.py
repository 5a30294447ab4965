"""The websocket stream's message: a snapshot's GPU JSON plus the kernel summary, made once."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Callable

# A few recent snapshots: a client that opens sends the latest one, which the others were
# usually sent already.
CACHED_SNAPSHOTS = 4


class StreamMessages:
    """Makes each snapshot's stream message once and serves it to every client."""

    def __init__(self, kernel_summary: Callable[[], list[dict[str, Any]]]) -> None:
        self._kernel_summary = kernel_summary
        # id(snapshot) -> (snapshot, message); the snapshot is kept so that its id is not reused
        self._cache: OrderedDict[int, tuple[Any, str]] = OrderedDict()

    def message(self, snapshot: Any) -> str:
        """GET gpus's JSON for this snapshot with ``"kernels"`` added as its last member."""
        cached = self._cache.get(id(snapshot))
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        # Spliced, not re-encoded: the snapshot's text was made once when it was taken.
        text = snapshot.text[:-1] + ',"kernels":' + json.dumps(self._kernel_summary()) + "}"
        self._cache[id(snapshot)] = (snapshot, text)
        while len(self._cache) > CACHED_SNAPSHOTS:
            self._cache.popitem(last=False)
        return text

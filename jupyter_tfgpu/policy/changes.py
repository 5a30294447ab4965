"""Which notebook policies changed, numbered, so every open view can catch up.

Each change to the stored policies (a write by this server, or another process's write found
by the store's refresh) gets the next revision number. Views keep the revision they showed:
a newer one names the notebooks to read again; a gap longer than the changes kept, or another
``epoch`` (the server restarted, or the admin's caps changed), means read everything again.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

# Changes kept for views that missed a few messages.
KEPT_CHANGES = 32


class PolicyChanges:
    """A revision counter over policy changes, with the last few changed paths; thread-safe."""

    def __init__(self, kept: int = KEPT_CHANGES) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._revision = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=kept)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def revision(self) -> int:
        """The number of the last change (0: none since the server started)."""
        return self._revision

    def record(self, paths: Iterable[str]) -> None:
        """Number one change of these notebooks' policies, then tell the listeners."""
        paths = sorted(set(paths))
        if not paths:
            return
        with self._lock:
            self._revision += 1
            for path in paths:
                self._recent.append((self._revision, path))
        for listener in list(self._listeners):
            listener()

    def start_over(self) -> None:
        """Every policy may read differently now (the admin's caps changed): a new epoch, so
        every view reads everything again, then tell the listeners."""
        with self._lock:
            self.epoch = uuid.uuid4().hex[:12]
            # Still counted up: a message made for the old revision is never sent again.
            self._revision += 1
            self._recent.clear()
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each change, from the thread that made it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def to_json(self) -> dict[str, Any]:
        """The stream's ``policies`` member."""
        with self._lock:
            recent = list(self._recent)
            revision = self._revision
            epoch = self.epoch
        return {
            "epoch": epoch,
            "revision": revision,
            "changes": [{"revision": r, "path": p} for r, p in recent],
        }

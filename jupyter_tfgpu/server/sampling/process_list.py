"""One GPU's last process list, and whether it still stands for now.

A process list whose read failed is unknown, not empty ("no processes" would read every
kernel's memory as 0): the last list is kept, marked stale with the reason, while it is younger
than ``STALE_PROCESSES_SECONDS``, or ``STALE_PROCESSES_READS`` process-list intervals when those
are longer. Then it is dropped, still marked stale: kept for ever, it would be a lie.
"""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_tfgpu.gpu.readings import ProcessReading

STALE_PROCESSES_SECONDS = 60.0
STALE_PROCESSES_READS = 3


@dataclass
class ProcessList:
    """The rows a backend's ``read_processes`` gave last, when, and why they are stale."""

    rows: tuple[ProcessReading, ...] = ()
    read_at: float | None = None  # the round's time of the last read that answered
    stale: str | None = None  # why ``rows`` is not this round's list; None when it is

    def took(self, rows: tuple[ProcessReading, ...], now: float) -> None:
        """A read that answered."""
        self.rows, self.read_at, self.stale = rows, now, None

    def failed(self, reason: str, now: float, interval: float) -> None:
        """A read that failed: keep the last rows, marked stale, until they are too old."""
        bound = max(STALE_PROCESSES_SECONDS, STALE_PROCESSES_READS * interval)
        self.stale = reason
        if self.read_at is None:
            self.rows = ()  # never read: empty, and marked as unknown
        elif now - self.read_at > bound:
            self.rows = ()
            self.stale = f"{reason}; no process list read for over {bound:g} s"

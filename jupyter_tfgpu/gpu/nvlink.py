"""NVLink data counters made monotonic per link, and throughput from per-link deltas.

NVML reports one KiB counter per link and direction. A sum over the links that answered drops
when one link is silent for a reading, which Prometheus takes for a counter reset (and
``rate()`` for a huge spike). So each link keeps its last value: a silent link stays in the
total at that value, and a link whose counter went backwards (a driver reload, a GPU reset) is
rebased so that its part of the total never decreases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence


@dataclass
class _LinkCounter:
    """One link, one direction: the driver's last value and what came before a reset (KiB)."""

    raw: int
    carried: int = 0

    @property
    def value(self) -> int:
        """KiB counted since the server first read this link; never decreases."""
        return self.carried + self.raw

    def update(self, raw: int) -> int:
        """Take a new reading; KiB counted since the last one."""
        if raw < self.raw:
            # The driver's counter restarted: keep what it had counted, count on from zero.
            self.carried += self.raw
            delta = raw
        else:
            delta = raw - self.raw
        self.raw = raw
        return delta


class NvlinkTotals(NamedTuple):
    """Bytes/s over the links that answered both this time and last time, and the totals."""

    tx: int | None
    rx: int | None
    tx_total: int | None  # bytes, over every link that ever answered
    rx_total: int | None


class NvlinkCounters:
    """One GPU's NVLink data counters, per link and direction."""

    def __init__(self) -> None:
        self._sent: dict[int, _LinkCounter] = {}
        self._received: dict[int, _LinkCounter] = {}
        self._answered: set[int] = set()  # links that answered at the last reading
        self._at: int | None = None  # microseconds of the last reading any link answered

    def update(
        self, at_us: int, sent: Sequence[int | None], received: Sequence[int | None]
    ) -> NvlinkTotals:
        """Take one reading (KiB per link; None where a link did not answer)."""
        answered: set[int] = set()
        tx_delta = rx_delta = 0
        for link, (tx, rx) in enumerate(zip(sent, received)):
            if tx is None or rx is None:
                continue  # a silent link keeps its last value in the totals
            answered.add(link)
            for counters, raw in ((self._sent, tx), (self._received, rx)):
                counter = counters.get(link)
                if counter is None:
                    counters[link] = _LinkCounter(int(raw))
                    continue
                delta = counter.update(int(raw))
                if link in self._answered:  # only links read both times make the rate
                    if counters is self._sent:
                        tx_delta += delta
                    else:
                        rx_delta += delta
        rate_tx = rate_rx = None
        both = answered & self._answered
        if both and self._at is not None and at_us > self._at:
            seconds = (at_us - self._at) / 1e6
            rate_tx = int(tx_delta * 1024 / seconds)
            rate_rx = int(rx_delta * 1024 / seconds)
        if answered:
            self._answered, self._at = answered, at_us
        return NvlinkTotals(rate_tx, rate_rx, *self.totals())

    def totals(self) -> tuple[int | None, int | None]:
        """Bytes sent and received over every link that ever answered; None before any did."""
        if not self._sent:
            return None, None
        sent = sum(c.value for c in self._sent.values())
        received = sum(c.value for c in self._received.values())
        return sent * 1024, received * 1024

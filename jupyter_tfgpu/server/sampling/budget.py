"""The sampler's driver-time budget: the groups' measured costs and planned cadences.

NVML calls hold the driver's lock that users' GPU work needs too, so the sampler spends at most
a share of wall time (``TFGPU.nvml_budget``) inside them; these are the numbers and the planning.
Each group's share, typical cost and freshness floor are in its row of ``groups.py``.

What a reading costs is estimated from the lowest of its recent times, per GPU, not their
average. A call timed from Python also holds the time the sampler's thread waited for a CPU or
for the GIL (a start storm of kernels on a small machine, a busy event loop); those waits only
ever add, so the lowest recent time is the closest to what the driver itself took (the reason
``timeit`` reports the minimum). The estimate falls as soon as one quick reading comes, and rises
only when every reading of the window was slower: a genuine rise (more processes to list) shows
within ``COST_WINDOW_SECONDS``; load on the machine for less than that does not show at all.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from jupyter_tfgpu.server.sampling.groups import SAMPLING_GROUPS

# Cadences are planned on this share of the budget; the rest absorbs jitter and bursts.
PLAN_SHARE = 0.9
# The driver-time bucket holds at most this many seconds' worth of budget.
TOKEN_WINDOW = 10.0
# A GPU's cost for a group is the lowest of its readings of the last this many seconds (and at
# most this many readings; the newest is always kept).
COST_WINDOW_SECONDS = 120.0
COST_WINDOW_READINGS = 64


@dataclass
class GroupStats:
    """What the sampler measured for one reading group."""

    desired: float
    interval: float
    max_interval: float | None = None  # the freshness floor's bound, for groups that have one
    cost: float = 0.0  # planning estimate: seconds per round over all GPUs (lowest recent)
    last: float = 0.0  # seconds the last round took, as timed (waits included)
    calls: int = 0
    seconds: float = 0.0  # total seconds inside the backend, as timed
    last_read: float | None = None
    recent: dict[int, deque[tuple[float, float]]] = field(default_factory=dict)

    @property
    def next_due(self) -> float:
        """When the group is due, from its last reading and the interval planned now."""
        return -math.inf if self.last_read is None else self.last_read + self.interval

    def record(self, now: float, per_gpu: dict[int, float]) -> float:
        """Fold one round's times (seconds per GPU) into the estimate; return the new cost."""
        self.calls += 1
        self.last = sum(per_gpu.values())
        self.seconds += self.last
        self.last_read = now
        for key in [k for k in self.recent if k not in per_gpu]:
            del self.recent[key]  # a GPU not read this round (lost) costs nothing
        cost = 0.0
        for key, seconds in per_gpu.items():
            window = self.recent.setdefault(key, deque(maxlen=COST_WINDOW_READINGS))
            window.append((now, seconds))
            while len(window) > 1 and window[0][0] < now - COST_WINDOW_SECONDS:
                window.popleft()
            cost += min(s for _, s in window)
        self.cost = cost
        return cost


@dataclass
class Plan:
    """Cadences for a set of measured costs, and each group's share of the budget."""

    intervals: dict[str, float]
    allowances: dict[str, float]  # fraction of wall time each group may spend in the driver

    def over_budget(self, costs: dict[str, float]) -> list[str]:
        """Groups the freshness floor keeps above their allowance."""
        return [
            g
            for g, interval in self.intervals.items()
            if g in self.allowances
            and costs.get(g, 0.0) / interval > self.allowances[g] * (1 + 1e-9)
        ]


def plan(costs: dict[str, float], desired: dict[str, float], budget: float) -> Plan:
    """Stretch each group's interval so the total time inside the backend stays within budget.

    ``costs`` are seconds per round and ``desired`` the configured intervals, by group name;
    ``budget`` is a fraction of wall time. Each group may use its share of the budget; shares a
    group leaves unused are handed to the groups that need more, in the table's order. A group
    with a freshness floor (``max_stretch``) is never stretched past it, even over its share.
    """
    rows = {row.name: row for row in SAMPLING_GROUPS if row.name in desired}
    groups = list(rows)
    allowance = {g: rows[g].share * budget for g in groups}
    for _ in range(len(groups)):
        spare = 0.0
        needy = []
        for g in groups:
            want = costs.get(g, 0.0) / desired[g]
            if want <= allowance[g]:
                spare += allowance[g] - want
                allowance[g] = want
            else:
                needy.append(g)
        if not needy or spare <= 1e-12:
            break
        weight = sum(rows[g].share for g in needy)
        for g in needy:
            allowance[g] += spare * rows[g].share / weight
    intervals = {}
    for g in groups:
        cost = costs.get(g, 0.0)
        interval = desired[g] if cost <= 0 else max(desired[g], cost / max(allowance[g], 1e-9))
        max_stretch = rows[g].max_stretch
        if max_stretch is not None:
            interval = min(interval, desired[g] * max_stretch)
        intervals[g] = interval
    return Plan(intervals, allowance)


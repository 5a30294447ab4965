"""Scheduling: when a round is due, which groups it reads, and the driver time they may spend;
the worker's loop of rounds, and who watches the groups read only while watched.

The plan of the cadences and the costs it is made from are in ``budget.py``; each group's
share, typical cost and freshness floor in its row of ``groups.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from jupyter_tfgpu.server.sampling.budget import PLAN_SHARE, TOKEN_WINDOW, GroupStats, Plan, plan
from jupyter_tfgpu.server.sampling.groups import BY_NAME, FAST, SAMPLING_GROUPS, SamplingGroup

# How long a REST request for PCIe figures keeps PCIe sampling on.
PCIE_REQUEST_SECONDS = 30.0

class Ticker:
    """When the next round is due: on a grid of the fast interval (a slow round does not shift
    the cadence). An extra round (a kernel started, PCIe asked for) does not move the next one;
    an interval the budget just shortened brings it forward."""

    def __init__(self, now: float) -> None:
        self.base = self.tick = now  # the last scheduled tick, and the next

    def after_round(self, started: float, now: float, interval: float) -> None:
        """A round that ``started`` ended at ``now``; ``interval`` is the one planned now."""
        if started >= self.tick:  # the scheduled round, not an extra one
            self.base = self.tick
            self.tick = max(self.tick + interval, now + 0.001)

    def due(self, interval: float) -> float:
        """When the next scheduled round is due, with the interval in force now."""
        return min(self.tick, self.base + interval)


class Schedule:
    """Which groups a round reads: each group's planned interval and measured cost, the driver
    time saved up to spend on them (a token bucket), and the groups asked for out of turn.

    Rounds run on the fast group's grid (``Ticker``) and read the fast group every time; another
    group is read when it is due and the bucket holds what it should cost.
    """

    def __init__(self, desired: dict[str, float], budget: float) -> None:
        self.budget = budget
        self.stats = {
            group.name: GroupStats(
                desired[group.name],
                desired[group.name],
                None if group.max_stretch is None else desired[group.name] * group.max_stretch,
            )
            for group in SAMPLING_GROUPS
        }
        self.plan = Plan(dict(desired), {})
        self.gpu_count = 0
        # Driver time saved up (seconds); slow groups spend it, so bursts stay in budget.
        self.tokens = 0.0
        self.tokens_at = time.monotonic()
        # Groups to read at the next round, due or not (the processes after a kernel started).
        self.requested: set[str] = set()

    def interval(self, group: SamplingGroup) -> float:
        """The group's interval as planned now."""
        return self.stats[group.name].interval

    def opened(self, gpu_count: int) -> None:
        """The backend opened with this many GPUs: start with a full bucket, so the first reading
        of every group (and the first PCIe reading when someone starts watching) comes at once;
        the bucket then pays it back."""
        self.gpu_count = gpu_count
        self.tokens = self.token_cap()
        self.tokens_at = time.monotonic()

    def request(self, group: SamplingGroup) -> None:
        """Read the group at the next round, due or not."""
        self.requested.add(group.name)

    def watched_due(self, now: float) -> bool:
        """Whether a group read only while watched is due (its first reading once watched)."""
        return any(
            self.stats[group.name].next_due <= now
            for group in SAMPLING_GROUPS
            if group.watched_only
        )

    def due(self, now: float, watched: bool) -> list[SamplingGroup]:
        """The groups this round reads, in the table's order (``watched``: a client watches)."""
        # Half a tick of tolerance: rounds sit on the fast grid, so a group due a few
        # microseconds after a tick would otherwise wait a whole extra tick.
        slack = self.stats[FAST.name].interval / 2
        due = []
        for group in SAMPLING_GROUPS:
            if group is FAST:
                due.append(group)
                continue
            if group.watched_only and not watched:
                continue
            stats = self.stats[group.name]
            if now < stats.next_due - slack and group.name not in self.requested:
                continue
            if self.tokens < self.expected_cost(group):
                # Not enough driver time saved up: a slow group waits rather than overspend.
                continue
            self.requested.discard(group.name)
            due.append(group)
        return due

    def expected_cost(self, group: SamplingGroup) -> float:
        """Seconds a group's round should take: measured, else the known typical cost."""
        stats = self.stats[group.name]
        if stats.calls:
            return stats.cost
        return group.typical_cost * self.gpu_count

    def earn(self, now: float) -> None:
        """Driver time accrues at the budget's rate, up to a cap (a token bucket)."""
        elapsed = max(0.0, now - self.tokens_at)
        self.tokens_at = now
        self.tokens = min(self.token_cap(), self.tokens + elapsed * self.budget)

    def token_cap(self) -> float:
        """The most driver time the bucket holds."""
        return max(self.budget * TOKEN_WINDOW, *(self.expected_cost(g) for g in SAMPLING_GROUPS))

    def spend(self, now: float, spent: dict[str, dict[int, float]]) -> None:
        """A round read these groups (seconds per GPU, by group name): fold the times into the
        costs, plan the intervals again, and take what the round cost from the bucket."""
        for name, per_gpu in spent.items():
            self.stats[name].record(now, per_gpu)
        self.plan = plan(
            {n: s.cost for n, s in self.stats.items()},
            {n: s.desired for n, s in self.stats.items()},
            self.budget * PLAN_SHARE,
        )
        for name, interval in self.plan.intervals.items():
            self.stats[name].interval = interval
        # The bucket pays for the driver's time (the estimates), not for waits on a busy
        # machine; the fast group's spending over its share (the freshness floor) is not
        # taken from the others' savings.
        for name in spent:
            stats = self.stats[name]
            charge = stats.cost
            if BY_NAME[name].max_stretch is not None:
                charge = min(charge, self.plan.allowances.get(name, 0.0) * stats.interval)
            self.tokens -= charge


class Watchers:
    """Who asks for the groups read only while watched (the interconnect): each open stream until
    it lets go, and each REST request for ``PCIE_REQUEST_SECONDS``."""

    def __init__(self) -> None:
        self.streams = 0
        self.until = 0.0  # when the last REST request's while is over

    def watch(self) -> Callable[[], None]:
        """One more stream watching, until the returned function is called."""
        self.streams += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.streams -= 1

        return release

    def request(self) -> bool:
        """A REST client asked for the figures; True when nobody had for a while."""
        first = time.monotonic() > self.until
        self.until = time.monotonic() + PCIE_REQUEST_SECONDS
        return first

    def wanted(self) -> bool:
        """Whether anybody currently asks for the figures."""
        return self.streams > 0 or time.monotonic() < self.until


def run_rounds(
    schedule: Schedule,
    sample_round: Callable[[float], None],
    watched: Callable[[], bool],
    stop: threading.Event,
    wake: threading.Event,
    round_done: Callable[[], None],
    log: logging.Logger,
) -> None:
    """The worker's loop: a round at each tick of the fast group's grid until ``stop``; ``wake``
    brings one forward when a group was asked for or a watched group's first reading is due."""
    ticker = Ticker(time.monotonic())
    while not stop.is_set():
        started = time.monotonic()
        try:
            sample_round(started)
        except Exception:  # noqa: BLE001 - the sampler must outlive any one bad reading
            log.exception("GPU sampling round failed")
        round_done()
        ticker.after_round(started, time.monotonic(), schedule.interval(FAST))
        wake.clear()
        while not stop.is_set():
            left = ticker.due(schedule.interval(FAST)) - time.monotonic()
            if left <= 0:
                break
            if wake.wait(left):
                wake.clear()
                if schedule.requested or (watched() and schedule.watched_due(time.monotonic())):
                    break

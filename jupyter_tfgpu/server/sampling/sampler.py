"""One sampler per server: reads the backend off the event loop, within a driver-time budget.

Every client (REST, websocket, metrics, enforcement) reads what the sampler last took, so the
number of backend calls per second does not depend on how many clients listen. The sampling
groups (what is read together, how often, by which backend method) are the table in
``groups.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from jupyter_tfgpu.gpu import Backend, BackendUnavailable, DeviceInfo, GpuLost
from jupyter_tfgpu.gpu.group_readings import FastReading, InterconnectReading, SlowReading
from jupyter_tfgpu.gpu.readings import (
    ClockReading,
    GpuReading,
    MemoryReading,
    MigInstanceReading,
    MigReading,
    NvlinkReading,
    PcieReading,
    PowerReading,
    UtilizationReading,
)
from jupyter_tfgpu.server.sampling.budget import PLAN_SHARE, TOKEN_WINDOW, GroupStats, Plan, plan
from jupyter_tfgpu.server.sampling.groups import (
    BY_NAME,
    FAST,
    PCIE,
    PROCESSES,
    SAMPLING_GROUPS,
    SLOW,
    SamplingGroup,
)
from jupyter_tfgpu.server.sampling.history import History
from jupyter_tfgpu.server.sampling.process_list import ProcessList


# -- opening the backend, and lost GPUs, again ----------------------------------------------------

# A lost GPU (or one that could not be opened) is opened again this often, in case it comes
# back (e.g. after a reset).
LOST_RETRY_SECONDS = 30.0
# A backend that failed to open, or found no GPU, is tried again after this long, doubling up
# to the maximum: a driver still loading (or still bringing GPUs up) answers soon, a host with
# no GPU at all costs one try per 5 minutes.
OPEN_RETRY_SECONDS = 5.0
OPEN_RETRY_MAX_SECONDS = 300.0


class OpenRetry:
    """When a backend that did not open is tried again (5 s, doubling to 5 min), and saying why
    once per reason."""

    def __init__(self, clock: Callable[[], float], log: logging.Logger) -> None:
        self._clock = clock
        self.log = log
        self.delay: float | None = None  # the wait before the pending retry
        self.at: float | None = None  # when it is due; None: no retry pending
        self._logged: str | None = None  # the reason last logged

    def failed(self, err: Exception) -> tuple[str, float]:
        """The open failed with ``err``: why, in words, and the seconds until it is tried again."""
        if isinstance(err, BackendUnavailable):
            reason = err.reason
        else:
            reason = f"{type(err).__name__}: {err}"
        delay = OPEN_RETRY_SECONDS
        if self.delay is not None:
            delay = min(self.delay * 2, max(OPEN_RETRY_MAX_SECONDS, OPEN_RETRY_SECONDS))
        self.delay = delay
        self.at = self._clock() + delay
        return reason, delay

    def say(self, backend: str, err: Exception, reason: str, delay: float, warn: bool) -> None:
        """Log why the backend is unavailable: once per reason (a host without GPUs must not fill
        the log every 5 minutes), as a warning where ``warn`` or the failure was unexpected."""
        if reason == self._logged:
            self.log.debug("GPU backend %s still unavailable: %s", backend, reason)
            return
        self._logged = reason
        expected = isinstance(err, BackendUnavailable) and not warn
        self.log.log(
            logging.INFO if expected else logging.WARNING,
            "GPU backend %s unavailable: %s (trying again in %g s)",
            backend,
            reason,
            delay,
            exc_info=not isinstance(err, BackendUnavailable),
        )

    def opened(self) -> None:
        """The backend opened: no retry pending."""
        self.delay = self.at = None

    def due(self) -> bool:
        """Whether a retry is pending and due."""
        return self.at is not None and self._clock() >= self.at

    def seconds_left(self) -> float | None:
        """Seconds until the pending retry; None when none is pending."""
        if self.at is None:
            return None
        return round(max(0.0, self.at - self._clock()), 1)


def log_opened(log: logging.Logger, backend: str, gpus: Sequence[GpuState]) -> None:
    """Say what the open found: the GPUs, and each one that could not be opened."""
    log.info("jupyter-tfgpu: backend %s, %d GPU(s)", backend, len(gpus))
    for gpu in gpus:
        if gpu.lost:
            log.warning(
                "GPU %d: %s (tried again every %g s)",
                gpu.info.index, gpu.lost_reason, LOST_RETRY_SECONDS,
            )  # fmt: skip


def lost_retry_at(now: float) -> float:
    """When a GPU found lost (or not opened) at ``now`` is opened again."""
    return now + LOST_RETRY_SECONDS


def reopen_lost(
    backend: Backend, gpu: GpuState, now: float, timer: Callable[[], float]
) -> tuple[bool, float | None]:
    """Open a lost GPU again when its retry is due: whether it answered, and the seconds the
    try took (None when it was not due)."""
    if gpu.retry_at is None:
        gpu.retry_at = lost_retry_at(now)  # lost at open: it was just tried
    if now < gpu.retry_at:
        return False, None
    started = timer()
    try:
        info = backend.reopen(gpu.info.index)
    except Exception as err:  # noqa: BLE001 - the GPU stays lost, with the reason
        info = replace(gpu.info, lost=True, lost_reason=f"{type(err).__name__}: {err}")
    seconds = timer() - started
    if info.lost:
        gpu.lost_reason = info.lost_reason or gpu.lost_reason
        gpu.retry_at = lost_retry_at(now)
        return False, seconds
    gpu.info = info
    return True, seconds


# -- what is known of one GPU between rounds ------------------------------------------------------

@dataclass
class GpuState:
    """What the sampler knows of one GPU between rounds: its facts, its groups' last readings
    and their errors, and whether it is lost."""

    info: DeviceInfo
    # Group name -> its last reading; a group that failed as a whole has none (its fields null).
    readings: dict[str, Any] = field(default_factory=dict)
    # The last reading of the group kept when it fails (``stale_when_failed``: the processes).
    processes: ProcessList = field(default_factory=ProcessList)
    lost: bool = False
    lost_reason: str | None = None
    retry_at: float | None = None  # when a lost GPU is opened again; None: from the next round
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> field -> reason

    @classmethod
    def opened(cls, info: DeviceInfo) -> GpuState:
        """A GPU as the backend's open found it (lost when it could not be opened)."""
        if not info.lost:
            return cls(info)
        return cls(info, lost=True, lost_reason=info.lost_reason or "the device could not be opened")

    def took(self, group: SamplingGroup, reading: Any, now: float) -> Mapping[str, str]:
        """A reading of the group that answered: it replaces the group's last one whole (a part
        it no longer has, NVLink on a GPU back without links, is gone), and its errors the
        last ones (a field that answers again loses its reason). Returns those errors."""
        if group.stale_when_failed:
            self.processes.took(reading, now)
            self.errors.pop(group.name, None)
            return {}
        self.readings[group.name] = reading
        self.errors[group.name] = dict(reading.errors)
        return reading.errors

    def failed(self, group: SamplingGroup, reason: str, now: float, interval: float) -> None:
        """A read of the group that failed as a whole: its fields are null with the reason, not
        stale, but for a group whose absence would mislead (the process list: "no processes"),
        kept marked stale; ``interval`` is the group's."""
        self.readings.pop(group.name, None)
        if group.stale_when_failed:
            self.processes.failed(reason, now, interval)
        self.errors[group.name] = {key: reason for key in group.fields}

    def went_lost(self, reason: str, now: float, retry_at: float, interval: float) -> None:
        """The GPU stopped answering: ``lost_reason`` says it all; opened again at ``retry_at``;
        ``interval`` is the process list's."""
        self.lost, self.lost_reason = True, reason
        self.errors = {}
        self.retry_at = retry_at
        self.lost_round(now, interval)

    def lost_round(self, now: float, interval: float) -> None:
        """A round of the GPU lost: its process list is not this round's either (and ages like a
        failed read); ``interval`` is the process list's."""
        self.processes.failed(f"the GPU is lost: {self.lost_reason}", now, interval)


# -- scheduling: the ticker and the driver-time budget --------------------------------------------

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
            self.stats[group.name].next_due <= now for group in SAMPLING_GROUPS if group.watched_only
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


# -- reading a round ------------------------------------------------------------------------------

class FailureLog:
    """Logs a failed reading once per GPU, field and reason; the snapshot says it every time."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._said: set[tuple[int, str, str]] = set()

    def warn(self, index: int, path: str, reason: str) -> None:
        """Log that GPU ``index``'s ``path`` is null for ``reason``, unless that was said."""
        key = (index, path, reason)
        if key not in self._said:
            self._said.add(key)
            self.log.warning("GPU %d %s: %s (null until it answers again)", index, path, reason)


def read_round(
    backend: Backend,
    gpus: Sequence[GpuState],
    due: Sequence[SamplingGroup],
    now: float,
    intervals: Mapping[str, float],
    timer: Callable[[], float],
    failures: FailureLog,
) -> dict[str, dict[int, float]]:
    """Read the due groups of every GPU (a lost one when its retry is due); the seconds each
    group took per GPU, by group name. ``intervals`` are the groups' as planned now."""
    log = failures.log
    spent: dict[str, dict[int, float]] = {group.name: {} for group in due}
    processes_interval = intervals[PROCESSES.name]
    for gpu in gpus:
        if gpu.lost:
            answered, seconds = reopen_lost(backend, gpu, now, timer)
            if seconds is not None and FAST.name in spent:
                # the driver time it took is the fast group's, for the budget
                spent[FAST.name][gpu.info.index] = seconds
            if not answered:
                gpu.lost_round(now, processes_interval)
                continue
        index = gpu.info.index
        try:
            for group in due:
                started = timer()
                try:
                    read_group(backend, gpu, group, now, failures)
                except GpuLost:
                    raise
                except Exception as err:  # noqa: BLE001 - nulls this group, not the round
                    reason = f"{type(err).__name__}: {err}"
                    gpu.failed(group, reason, now, intervals[group.name])
                    failures.warn(index, group.name, reason)
                finally:
                    per_gpu = spent[group.name]
                    per_gpu[index] = per_gpu.get(index, 0.0) + timer() - started
            if gpu.lost:
                log.warning("GPU %d answers again", gpu.info.index)
            gpu.lost, gpu.lost_reason = False, None
        except GpuLost as err:
            if not gpu.lost:
                log.error("GPU %d is lost: %s", gpu.info.index, err.reason)
            gpu.went_lost(err.reason, now, lost_retry_at(now), processes_interval)
    return spent


def read_group(
    backend: Backend, gpu: GpuState, group: SamplingGroup, now: float, failures: FailureLog
) -> None:
    """Read one group of one GPU with the backend method its row names."""
    index = gpu.info.index
    reading = getattr(backend, group.read)(index)
    for path, reason in gpu.took(group, reading, now).items():
        failures.warn(index, path, reason)
    # A reading may have found new facts (MIG instances made since, on a process-list read).
    gpu.info = backend.device_info(index)


# -- assembling the readings into a snapshot ------------------------------------------------------

Subscriber = Callable[["Snapshot"], None]
# Turns a round's readings into the ones published (attribution fills in the owners).
Annotator = Callable[[tuple[GpuReading, ...]], "Sequence[GpuReading] | None"]


@dataclass
class Snapshot:
    """One sample of every GPU, typed, and its JSON text (``GET gpus``) made once."""

    timestamp: float | None
    simulated: bool
    gpus: tuple[GpuReading, ...] = ()
    text: str = ""
    taken: float = 0.0
    # How often memory and utilization are read now, and why less often than configured.
    cadence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """As ``GET gpus`` serves it."""
        out: dict[str, Any] = {
            "timestamp": self.timestamp,
            "simulated": self.simulated,
            "gpus": [gpu.to_json() for gpu in self.gpus],
        }
        if self.cadence is not None:
            out["cadence"] = self.cadence
        return out


def gpu_reading(gpu: GpuState, watched: bool) -> GpuReading:
    """One GPU's reading for a snapshot, from its groups' last readings and its facts; a group
    read only while watched (the interconnect) shows its figures only while ``watched``."""
    info = gpu.info
    fast: FastReading | None = gpu.readings.get(FAST.name)
    slow: SlowReading | None = gpu.readings.get(SLOW.name)
    link: InterconnectReading | None = gpu.readings.get(PCIE.name)
    mig = None
    if info.mig_mode is not None:
        mig_memory = fast.mig_memory if fast is not None else {}
        mig = MigReading(
            info.mig_mode,
            tuple(
                MigInstanceReading(inst, mig_memory.get(inst.index))
                for inst in info.mig_instances
            ),
        )
    nvlink = (link.nvlink if link is not None else None) or NvlinkReading()
    if not watched:
        # Rates only while someone watches; the counters' last reading stays valid.
        nvlink = nvlink._replace(active=None, tx=None, rx=None)
    return GpuReading(
        index=info.index,
        uuid=info.uuid,
        name=info.name,
        lost=gpu.lost,
        lost_reason=gpu.lost_reason,
        errors={
            path: reason
            for group, errors in gpu.errors.items()
            if watched or not BY_NAME[group].watched_only
            for path, reason in errors.items()
        },
        memory=fast.memory if fast is not None else MemoryReading(info.memory_total, None, None),
        utilization=fast.utilization if fast is not None else UtilizationReading(None, None),
        temperature=slow.temperature if slow is not None else None,
        power=slow.power if slow is not None else PowerReading(None, info.power_limit),
        fan=slow.fan if slow is not None else None,
        clocks=ClockReading(
            slow.clocks.sm if slow is not None else None,
            slow.clocks.memory if slow is not None else None,
            info.max_clocks.get("sm"),
            info.max_clocks.get("memory"),
        ),
        pcie=link.pcie if link is not None and watched else PcieReading(None, None),
        nvlink=nvlink._replace(links=info.nvlink_links, reason=info.nvlink_reason),
        mig=mig,
        processes=gpu.processes.rows,
        processes_stale=gpu.processes.stale,
    )


def annotate(
    gpus: tuple[GpuReading, ...], annotators: Sequence[Annotator], log: logging.Logger
) -> tuple[GpuReading, ...]:
    """The readings as each annotator in turn returns them (one that fails is skipped)."""
    for annotator in annotators:
        try:
            annotated = annotator(gpus)
        except Exception:  # noqa: BLE001
            log.exception("snapshot annotator failed")
            continue
        if annotated is not None:
            gpus = tuple(annotated)
    return gpus


# -- the status text ------------------------------------------------------------------------------

def describe(
    schedule: Schedule,
    *,
    rounds: int,
    history_bytes: int,
    watched: bool,
    elapsed: float,
    gpu_count: int,
) -> dict[str, Any]:
    """What the sampler measured, for ``GET status`` (``elapsed``: seconds since it was made)."""
    stats = schedule.stats
    inside = sum(s.seconds for s in stats.values())
    return {
        "nvml_budget": schedule.budget,
        "backend_time_fraction": round(inside / max(elapsed, 1e-9), 6),
        "rounds": rounds,
        "history_bytes": history_bytes,
        "groups": {
            name: {
                "interval": round(s.interval, 3),
                "configured_interval": s.desired,
                "max_interval": s.max_interval,
                "stretched": stretched(s),
                "cost_ms": round(s.cost * 1000, 3),
                "measured_ms": round(s.last * 1000, 3),
                "calls": s.calls,
            }
            for name, s in stats.items()
        },
        "over_budget": schedule.plan.over_budget({n: s.cost for n, s in stats.items()}),
        "stretch_reason": stretch_reason(schedule, gpu_count),
        "pcie_watched": watched,
    }


def cadence(schedule: Schedule, gpu_count: int) -> dict[str, Any] | None:
    """The fast group's cadence for each snapshot; None before the GPUs are open."""
    if not gpu_count:
        return None
    fast = schedule.stats[FAST.name]
    return {
        "interval": round(fast.interval, 3),
        "configured_interval": fast.desired,
        "stretch_reason": stretch_reason(schedule, gpu_count),
    }


def stretched(stats: GroupStats) -> bool:
    """Whether the budget stretched the group's interval past its configured one."""
    return stats.interval > stats.desired * 1.001


def stretch_reason(schedule: Schedule, gpu_count: int) -> str | None:
    """Why GPU figures refresh less often than configured, in words; None when they do not."""
    fast = schedule.stats[FAST.name]
    if not stretched(fast):
        return None
    share = fast.cost / fast.desired
    text = (
        f"GPU figures refresh every {fast.interval:.1f} s instead of {fast.desired:g} s: "
        f"reading {gpu_count} GPU(s) takes {fast.cost * 1000:.1f} ms in the driver, "
        f"{share:.1%} of the time at {fast.desired:g} s, over the {schedule.budget:.1%} "
        "driver-time budget (TFGPU.nvml_budget)"
    )
    if fast.max_interval is not None and fast.interval >= fast.max_interval * 0.999:
        text += (
            f"; held at the {fast.max_interval:g} s freshness floor, which spends more than "
            "the budget"
        )
    return text + "."


# -- the sampler ----------------------------------------------------------------------------------

# How long a REST request for PCIe figures keeps PCIe sampling on.
PCIE_REQUEST_SECONDS = 30.0


class Sampler:
    """Polls a backend in one worker thread and fans snapshots out on the event loop.

    Each sampling group's configured interval comes as the keyword its row names
    (``groups.py``: ``interval`` for the fast group, ``slow_interval``, ...), its setting's
    default where not given. The parts do one job each: ``opening.py`` opens the backend and
    lost GPUs again, ``schedule.py`` says which groups a round reads within the budget,
    ``reading.py`` reads a round, ``snapshot.py`` makes the snapshot, ``status.py`` describes it.
    """

    def __init__(
        self,
        backend: Backend | None,
        *,
        history_seconds: int = 3600,
        budget: float = 0.02,
        unavailable_reason: str | None = None,
        warn_unavailable: bool = False,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
        log: logging.Logger | None = None,
        **intervals: float,
    ) -> None:
        arguments = {group.argument: group for group in SAMPLING_GROUPS}
        unknown = sorted(set(intervals) - set(arguments))
        if unknown:
            raise TypeError(f"Sampler() got an unexpected keyword argument {unknown[0]!r}")
        desired = {
            group.name: intervals.get(argument, group.default_interval)
            for argument, group in arguments.items()
        }
        self.backend = backend
        # The admin named this backend: its absence is a fault to warn about, not a GPU-less host.
        self.warn_unavailable = warn_unavailable
        self._clock = clock  # times the open retries
        self._timer = timer  # times each reading (tests inject one)
        self.interval = desired[FAST.name]
        self.history_seconds = history_seconds
        self.budget = budget
        self.log = log or logging.getLogger(__name__)
        self.available = False
        self.reason = unavailable_reason
        self.versions: dict[str, str | None] = {"driver": None, "nvml": None, "cuda": None}
        self._schedule = Schedule(desired, budget)
        # Each returns the readings to publish (or None to keep them as they are).
        self.annotators: list[Annotator] = []
        self.rounds = 0
        self._gpus: list[GpuState] = []
        self._history = History(0, 0)
        self._latest = Snapshot(None, self.simulated)
        self._latest.text = json.dumps(self._latest.to_json())
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pcie_watchers = 0
        self._pcie_until = 0.0
        self._started_at = time.monotonic()
        self._failures = FailureLog(self.log)
        self._opened = False
        self._first_outcome = threading.Event()  # see ``opening``
        self._retry = OpenRetry(clock, self.log)

    # -- life cycle --------------------------------------------------------------------------

    @property
    def simulated(self) -> bool:
        """Whether the GPUs shown are simulated."""
        return bool(self.backend is not None and self.backend.simulated)

    @property
    def device_count(self) -> int:
        """Number of GPUs the backend found."""
        return len(self._gpus)

    @property
    def devices(self) -> list[DeviceInfo]:
        """Static facts of each GPU."""
        return [g.info for g in self._gpus]

    @property
    def stats(self) -> dict[str, GroupStats]:
        """What the sampler measured and planned for each group, by name."""
        return self._schedule.stats

    @property
    def opening(self) -> bool:
        """True from ``start`` until the worker's first open has an outcome (for an open that
        worked: until the first snapshot with the GPUs' readings is published)."""
        return self._thread is not None and not self._first_outcome.is_set()

    def wait_opened(self, timeout: float) -> bool:
        """Block until ``opening`` is over (tests, tools; never on the event loop)."""
        return self._first_outcome.wait(timeout)

    @property
    def retry_in(self) -> float | None:
        """Seconds until the backend is tried again; None when it is open or never retried."""
        if self._opened:
            return None
        return self._retry.seconds_left()

    def open(self) -> bool:
        """Open the backend; on any failure stay up, unavailable, with the reason and a retry."""
        if self.backend is None:
            self.available = False
            self.reason = self.reason or "GPU monitoring is turned off (TFGPU.backend = 'none')"
            return False
        try:
            infos = self.backend.open()
        except Exception as err:  # noqa: BLE001 - no GPU data is a state to report, not a crash
            self._open_failed(err)
            return False
        if self._stop.is_set():
            # The server stopped while a slow open was under way: hand the library straight back.
            self.backend.close()
            return False
        try:
            self.versions = self.backend.versions()
        except Exception:  # noqa: BLE001 - versions are informative only
            self.log.debug("could not read GPU versions", exc_info=True)
        if not infos:
            # A driver still bringing its GPUs up: look again, on the open's back-off.
            self.backend.close()
            self._open_failed(BackendUnavailable(f"{self.backend.name}: no GPU found"))
            return False
        gpus = [GpuState.opened(info) for info in infos]
        capacity = math.ceil(self.history_seconds / self.interval) if self.history_seconds else 0
        self._history = History(capacity, len(gpus))
        self._gpus = gpus
        self._schedule.opened(len(gpus))
        self._opened = True
        self._retry.opened()
        # The GPUs as known without a reading (names, totals; readings null), served before
        # "available" is: GET status and GET gpus never disagree while the first round runs.
        self._publish_round(time.monotonic())
        # Set last: request handlers read these from the event loop while the worker opens.
        self.reason = None
        self.available = True
        return True

    def _open_failed(self, err: Exception) -> None:
        """Record why the backend did not open and when to try again."""
        assert self.backend is not None
        reason, delay = self._retry.failed(err)
        self.available = False
        self.reason = reason
        self._retry.say(self.backend.name, err, reason, delay, self.warn_unavailable)

    def retry_open(self) -> bool:
        """Open the backend if it failed before and its retry is due; True once it is open."""
        if self._opened:
            return True
        if not self._retry.due():
            return False
        if not self.open():
            return False
        self._log_opened()
        self._publish_round(time.monotonic())
        return True

    def _log_opened(self) -> None:
        assert self.backend is not None
        log_opened(self.log, self.backend.name, self._gpus)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker thread, which opens the backend (and retries a failed open).

        Nothing here waits on the driver: a slow or hung ``nvmlInit`` holds the worker, not
        the server's start.
        """
        self._loop = loop
        if self.backend is None:
            self.open()  # no I/O: says that monitoring is off
            self.log.info("jupyter-tfgpu: backend none, %s", self.reason)
            self._publish_round(time.monotonic())
            self._first_outcome.set()
            return
        self.reason = f"opening the {self.backend.name} backend"
        self._thread = threading.Thread(target=self._run, name="tfgpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker and release the backend."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.backend is not None and self._opened:
            self.backend.close()
            self._opened = False

    # -- what clients use --------------------------------------------------------------------

    @property
    def latest(self) -> Snapshot:
        """The last snapshot taken (never blocks, never calls the backend)."""
        return self._latest

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(snapshot)`` on the event loop after every sample."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def history(self, seconds: float) -> dict[str, Any]:
        """The last ``seconds`` of the per-GPU series."""
        cutoff = time.time() - seconds
        data = self._history.since(cutoff)
        for series, gpu in zip(data["gpus"], self._gpus):
            series["uuid"] = gpu.info.uuid
        return {"interval": self.interval, "simulated": self.simulated, **data}

    def history_bytes(self) -> int:
        """Memory held by the history buffers."""
        return self._history.nbytes()

    def refresh_processes(self) -> None:
        """Read process lists at the next round (after a kernel starts, restarts or stops)."""
        self._schedule.request(PROCESSES)
        self._wake.set()

    def watch_pcie(self) -> Callable[[], None]:
        """Keep PCIe sampling on until the returned function is called."""
        self._pcie_watchers += 1
        self._wake.set()
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._pcie_watchers -= 1

        return release

    def request_pcie(self) -> None:
        """Keep PCIe sampling on for a while because a REST client asked for it."""
        first = time.monotonic() > self._pcie_until
        self._pcie_until = time.monotonic() + PCIE_REQUEST_SECONDS
        if first:
            self._wake.set()

    def pcie_wanted(self) -> bool:
        """Whether anybody currently asks for PCIe figures."""
        return self._pcie_watchers > 0 or time.monotonic() < self._pcie_until

    def describe(self) -> dict[str, Any]:
        """What the sampler measured, for ``GET status``."""
        return describe(
            self._schedule,
            rounds=self.rounds,
            history_bytes=self.history_bytes(),
            watched=self.pcie_wanted(),
            elapsed=time.monotonic() - self._started_at,
            gpu_count=len(self._gpus),
        )

    def cadence(self) -> dict[str, Any] | None:
        """The fast group's cadence for each snapshot; None before the GPUs are open."""
        return cadence(self._schedule, len(self._gpus))

    def stretch_reason(self) -> str | None:
        """Why GPU figures refresh less often than configured, in words; None when they do not."""
        return stretch_reason(self._schedule, len(self._gpus))

    # -- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sample()
        finally:
            self._first_outcome.set()

    def _sample(self) -> None:
        if self.open():
            self._log_opened()
        elif not self._stop.is_set():
            self._publish_round(time.monotonic())  # unavailable, with the reason
            self._first_outcome.set()
        while not self._opened and not self._stop.is_set():
            if not self.retry_open():
                self._stop.wait(max(self.retry_in or 0.0, 0.01))
        if not self._gpus:
            return
        schedule = self._schedule
        ticker = Ticker(time.monotonic())
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._sample_round(started)
            except Exception:  # noqa: BLE001 - the sampler must outlive any one bad reading
                self.log.exception("GPU sampling round failed")
            self._first_outcome.set()  # opened, and the first snapshot has the GPUs' readings
            ticker.after_round(started, time.monotonic(), schedule.interval(FAST))
            self._wake.clear()
            while not self._stop.is_set():
                left = ticker.due(schedule.interval(FAST)) - time.monotonic()
                if left <= 0:
                    break
                if self._wake.wait(left):
                    self._wake.clear()
                    if schedule.requested or (
                        self.pcie_wanted() and schedule.watched_due(time.monotonic())
                    ):
                        break

    def _sample_round(self, now: float) -> None:
        schedule = self._schedule
        schedule.earn(now)
        due = schedule.due(now, self.pcie_wanted())
        intervals = {name: stats.interval for name, stats in schedule.stats.items()}
        assert self.backend is not None
        spent = read_round(
            self.backend, self._gpus, due, now, intervals, self._timer, self._failures
        )
        schedule.spend(now, spent)
        self.rounds += 1
        self._publish_round(now)

    # -- snapshots ---------------------------------------------------------------------------

    def _publish_round(self, now: float) -> None:
        pcie_on = self.pcie_wanted()
        timestamp = time.time()
        gpus = tuple(gpu_reading(g, pcie_on) for g in self._gpus)
        gpus = annotate(gpus, self.annotators, self.log)
        self._history.append(timestamp, gpus)
        snapshot = Snapshot(timestamp, self.simulated, gpus, taken=now, cadence=self.cadence())
        snapshot.text = json.dumps(snapshot.to_json(), separators=(",", ":"))
        self._latest = snapshot
        loop = self._loop
        if loop is not None and self._subscribers:
            try:
                loop.call_soon_threadsafe(self._fan_out, snapshot)
            except RuntimeError:
                pass  # the loop is closing with the server

    def _fan_out(self, snapshot: Snapshot) -> None:
        for callback in list(self._subscribers):
            try:
                callback(snapshot)
            except Exception:  # noqa: BLE001
                self.log.exception("snapshot subscriber failed")

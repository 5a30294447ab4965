"""One sampler per server: reads the backend off the event loop, within a driver-time budget.

Every client (REST, websocket, metrics, enforcement) reads what the sampler last took, so the
number of backend calls per second does not depend on how many clients listen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

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
from jupyter_tfgpu.server.sampling.budget import (
    GROUPS,
    MAX_STRETCH,
    PLAN_SHARE,
    TOKEN_WINDOW,
    TYPICAL_COST,
    GroupStats,
    Plan,
    plan,
)
from jupyter_tfgpu.server.sampling.history import History
from jupyter_tfgpu.server.sampling.process_list import ProcessList

# A lost GPU (or one that could not be opened) is opened again this often, in case it comes
# back (e.g. after a reset).
LOST_RETRY_SECONDS = 30.0
# A backend that failed to open, or found no GPU, is tried again after this long, doubling up
# to the maximum: a driver still loading (or still bringing GPUs up) answers soon, a host with
# no GPU at all costs one try per 5 minutes.
OPEN_RETRY_SECONDS = 5.0
OPEN_RETRY_MAX_SECONDS = 300.0
# How long a REST request for PCIe figures keeps PCIe sampling on.
PCIE_REQUEST_SECONDS = 30.0
# The snapshot fields each group fills; a group that fails as a whole nulls these (the fast
# group its MIG instances' memory too), each with the reason.
GROUP_FIELDS = {
    "fast": ("memory", "utilization"),
    "processes": ("processes",),
    "slow": ("temperature", "power", "fan", "clocks"),
    "pcie": ("pcie", "nvlink"),  # the interconnect: PCIe, and NVLink where the GPU has it
}

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


@dataclass
class _GpuState:
    info: DeviceInfo
    # group -> its last reading (a FastReading, SlowReading or InterconnectReading); a group
    # that failed as a whole has none
    readings: dict[str, Any] = field(default_factory=dict)
    processes: ProcessList = field(default_factory=ProcessList)
    lost: bool = False
    lost_reason: str | None = None
    retry_at: float | None = None  # when a lost GPU is opened again; None: from the next round
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> field -> reason


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


class Sampler:
    """Polls a backend in one worker thread and fans snapshots out on the event loop."""

    def __init__(
        self,
        backend: Backend | None,
        *,
        interval: float = 1.0,
        history_seconds: int = 3600,
        budget: float = 0.02,
        slow_interval: float = 5.0,
        process_interval: float = 5.0,
        pcie_interval: float = 2.0,
        unavailable_reason: str | None = None,
        warn_unavailable: bool = False,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
        log: logging.Logger | None = None,
    ) -> None:
        self.backend = backend
        # The admin named this backend: its absence is a fault to warn about, not a GPU-less host.
        self.warn_unavailable = warn_unavailable
        self._clock = clock  # times the open retries
        self._timer = timer  # times each reading (tests inject one)
        self.interval = interval
        self.history_seconds = history_seconds
        self.budget = budget
        self.log = log or logging.getLogger(__name__)
        self.available = False
        self.reason = unavailable_reason
        self.versions: dict[str, str | None] = {"driver": None, "nvml": None, "cuda": None}
        desired = {
            "fast": interval,
            "processes": process_interval,
            "slow": slow_interval,
            "pcie": pcie_interval,
        }
        self.stats = {
            name: GroupStats(value, value, value * MAX_STRETCH[name] if name in MAX_STRETCH else None)
            for name, value in desired.items()
        }
        self._plan = Plan(dict(desired), {})
        # Each returns the readings to publish (or None to keep them as they are).
        self.annotators: list[Annotator] = []
        self.rounds = 0
        self._gpus: list[_GpuState] = []
        self._history = History(0, 0)
        self._latest = Snapshot(None, self.simulated)
        self._latest.text = json.dumps(self._latest.to_json())
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._refresh_processes = threading.Event()
        self._pcie_watchers = 0
        self._pcie_until = 0.0
        self._started_at = time.monotonic()
        self._warned: set[tuple[int, str, str]] = set()
        self._opened = False
        self._first_outcome = threading.Event()  # see ``opening``
        self._open_retry_in: float | None = None
        self._open_retry_at: float | None = None
        self._open_reason_logged: str | None = None
        # Driver time saved up (seconds); slow groups spend it, so bursts stay in budget.
        self._tokens = 0.0
        self._tokens_at = time.monotonic()

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
        if self._opened or self._open_retry_at is None:
            return None
        return round(max(0.0, self._open_retry_at - self._clock()), 1)

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
        gpus = [_GpuState(info) for info in infos]
        for gpu in gpus:
            if gpu.info.lost:
                gpu.lost = True
                gpu.lost_reason = gpu.info.lost_reason or "the device could not be opened"
        capacity = math.ceil(self.history_seconds / self.interval) if self.history_seconds else 0
        self._history = History(capacity, len(gpus))
        self._gpus = gpus
        # Start with a full bucket: the first reading of every group (and the first PCIe
        # reading when someone starts watching) comes at once; the bucket then pays it back.
        self._tokens = self._token_cap()
        self._tokens_at = time.monotonic()
        self._opened = True
        self._open_retry_in = self._open_retry_at = None
        # The GPUs as known without a reading (names, totals; readings null), served before
        # "available" is: GET status and GET gpus never disagree while the first round runs.
        self._publish_round(time.monotonic())
        # Set last: request handlers read these from the event loop while the worker opens.
        self.reason = None
        self.available = True
        return True

    def _open_failed(self, err: Exception) -> None:
        """Record why the backend did not open and when to try again (5 s, doubling to 5 min)."""
        assert self.backend is not None
        if isinstance(err, BackendUnavailable):
            reason = err.reason
        else:
            reason = f"{type(err).__name__}: {err}"
        delay = OPEN_RETRY_SECONDS
        if self._open_retry_in is not None:
            delay = min(self._open_retry_in * 2, max(OPEN_RETRY_MAX_SECONDS, OPEN_RETRY_SECONDS))
        self._open_retry_in = delay
        self._open_retry_at = self._clock() + delay
        self.available = False
        self.reason = reason
        if reason == self._open_reason_logged:
            self.log.debug("GPU backend %s still unavailable: %s", self.backend.name, reason)
            return
        # Once per reason: a host without GPUs must not fill the log every 5 minutes.
        self._open_reason_logged = reason
        expected = isinstance(err, BackendUnavailable) and not self.warn_unavailable
        self.log.log(
            logging.INFO if expected else logging.WARNING,
            "GPU backend %s unavailable: %s (trying again in %g s)",
            self.backend.name,
            reason,
            delay,
            exc_info=not isinstance(err, BackendUnavailable),
        )

    def retry_open(self) -> bool:
        """Open the backend if it failed before and its retry is due; True once it is open."""
        if self._opened:
            return True
        if self._open_retry_at is None or self._clock() < self._open_retry_at:
            return False
        if not self.open():
            return False
        self._log_opened()
        self._publish_round(time.monotonic())
        return True

    def _log_opened(self) -> None:
        """Say what the open found: the GPUs, and each one that could not be opened."""
        assert self.backend is not None
        self.log.info("jupyter-tfgpu: backend %s, %d GPU(s)", self.backend.name, self.device_count)
        for gpu in self._gpus:
            if gpu.lost:
                self.log.warning(
                    "GPU %d: %s (tried again every %g s)",
                    gpu.info.index, gpu.lost_reason, LOST_RETRY_SECONDS,
                )  # fmt: skip

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
        self._refresh_processes.set()
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
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        inside = sum(s.seconds for s in self.stats.values())
        return {
            "nvml_budget": self.budget,
            "backend_time_fraction": round(inside / elapsed, 6),
            "rounds": self.rounds,
            "history_bytes": self.history_bytes(),
            "groups": {
                name: {
                    "interval": round(s.interval, 3),
                    "configured_interval": s.desired,
                    "max_interval": s.max_interval,
                    "stretched": self._stretched(s),
                    "cost_ms": round(s.cost * 1000, 3),
                    "measured_ms": round(s.last * 1000, 3),
                    "calls": s.calls,
                }
                for name, s in self.stats.items()
            },
            "over_budget": self._plan.over_budget({n: s.cost for n, s in self.stats.items()}),
            "stretch_reason": self.stretch_reason(),
            "pcie_watched": self.pcie_wanted(),
        }

    def cadence(self) -> dict[str, Any] | None:
        """The fast group's cadence for each snapshot; None before the GPUs are open."""
        if not self._gpus:
            return None
        fast = self.stats["fast"]
        return {
            "interval": round(fast.interval, 3),
            "configured_interval": fast.desired,
            "stretch_reason": self.stretch_reason(),
        }

    @staticmethod
    def _stretched(stats: GroupStats) -> bool:
        return stats.interval > stats.desired * 1.001

    def stretch_reason(self) -> str | None:
        """Why GPU figures refresh less often than configured, in words; None when they do not."""
        fast = self.stats["fast"]
        if not self._stretched(fast):
            return None
        share = fast.cost / fast.desired
        text = (
            f"GPU figures refresh every {fast.interval:.1f} s instead of {fast.desired:g} s: "
            f"reading {len(self._gpus)} GPU(s) takes {fast.cost * 1000:.1f} ms in the driver, "
            f"{share:.1%} of the time at {fast.desired:g} s, over the {self.budget:.1%} driver-time "
            "budget (TFGPU.nvml_budget)"
        )
        if fast.max_interval is not None and fast.interval >= fast.max_interval * 0.999:
            text += (
                f"; held at the {fast.max_interval:g} s freshness floor, which spends more than "
                "the budget"
            )
        return text + "."

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
        ticker = Ticker(time.monotonic())
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._sample_round(started)
            except Exception:  # noqa: BLE001 - the sampler must outlive any one bad reading
                self.log.exception("GPU sampling round failed")
            self._first_outcome.set()  # opened, and the first snapshot has the GPUs' readings
            ticker.after_round(started, time.monotonic(), self.stats["fast"].interval)
            self._wake.clear()
            while not self._stop.is_set():
                left = ticker.due(self.stats["fast"].interval) - time.monotonic()
                if left <= 0:
                    break
                if self._wake.wait(left):
                    self._wake.clear()
                    if self._refresh_processes.is_set() or self._pcie_first_due():
                        break

    def _pcie_first_due(self) -> bool:
        stats = self.stats["pcie"]
        return self.pcie_wanted() and stats.next_due <= time.monotonic()

    def _due(self, now: float) -> list[str]:
        # Half a tick of tolerance: rounds sit on the fast grid, so a group due a few
        # microseconds after a tick would otherwise wait a whole extra tick.
        slack = self.stats["fast"].interval / 2
        due = []
        for name in GROUPS:
            stats = self.stats[name]
            if name == "fast":
                due.append(name)
                continue
            if name == "pcie" and not self.pcie_wanted():
                continue
            wanted = now >= stats.next_due - slack
            if name == "processes" and self._refresh_processes.is_set():
                wanted = True
            if not wanted:
                continue
            if self._tokens < self._expected_cost(name):
                # Not enough driver time saved up: a slow group waits rather than overspend.
                continue
            if name == "processes":
                self._refresh_processes.clear()
            due.append(name)
        return due

    def _expected_cost(self, name: str) -> float:
        """Seconds a group's round should take: measured, else the known typical cost."""
        stats = self.stats[name]
        if stats.calls:
            return stats.cost
        return TYPICAL_COST.get(name, 0.0) * len(self._gpus)

    def _earn(self, now: float) -> None:
        """Driver time accrues at the budget's rate, up to a cap (a token bucket)."""
        elapsed = max(0.0, now - self._tokens_at)
        self._tokens_at = now
        self._tokens = min(self._token_cap(), self._tokens + elapsed * self.budget)

    def _token_cap(self) -> float:
        return max(self.budget * TOKEN_WINDOW, *(self._expected_cost(n) for n in GROUPS))

    def _sample_round(self, now: float) -> None:
        self._earn(now)
        due = self._due(now)
        spent: dict[str, dict[int, float]] = {name: {} for name in due}
        for gpu in self._gpus:
            if gpu.lost and not self._reopened(gpu, now, spent):
                self._lost_processes(gpu, now)
                continue
            index = gpu.info.index
            try:
                for name in due:
                    started = self._timer()
                    try:
                        self._read_group(gpu, name, now)
                    except GpuLost:
                        raise
                    except Exception as err:  # noqa: BLE001 - nulls this group, not the round
                        self._group_failed(gpu, name, err, now)
                    finally:
                        spent[name][index] = spent[name].get(index, 0.0) + self._timer() - started
                if gpu.lost:
                    self.log.warning("GPU %d answers again", gpu.info.index)
                gpu.lost, gpu.lost_reason = False, None
            except GpuLost as err:
                if not gpu.lost:
                    self.log.error("GPU %d is lost: %s", gpu.info.index, err.reason)
                gpu.lost, gpu.lost_reason = True, err.reason
                gpu.errors = {}  # lost_reason says it all
                gpu.retry_at = now + LOST_RETRY_SECONDS
                self._lost_processes(gpu, now)
        for name in due:
            self.stats[name].record(now, spent[name])
        self._plan = plan(
            {n: s.cost for n, s in self.stats.items()},
            {n: s.desired for n, s in self.stats.items()},
            self.budget * PLAN_SHARE,
        )
        for name, interval in self._plan.intervals.items():
            self.stats[name].interval = interval
        # The bucket pays for the driver's time (the estimates), not for waits on a busy
        # machine; the fast group's spending over its share (the freshness floor) is not
        # taken from the others' savings.
        for name in due:
            stats = self.stats[name]
            charge = stats.cost
            if name in MAX_STRETCH:
                charge = min(charge, self._plan.allowances.get(name, 0.0) * stats.interval)
            self._tokens -= charge
        self.rounds += 1
        self._publish_round(now)

    def _reopened(self, gpu: _GpuState, now: float, spent: dict[str, dict[int, float]]) -> bool:
        """Open a lost GPU again when its retry is due; True when it answered."""
        if gpu.retry_at is None:
            gpu.retry_at = now + LOST_RETRY_SECONDS  # lost at open: it was just tried
        if now < gpu.retry_at:
            return False
        assert self.backend is not None
        started = self._timer()
        try:
            info = self.backend.reopen(gpu.info.index)
        except Exception as err:  # noqa: BLE001 - the GPU stays lost, with the reason
            info = replace(gpu.info, lost=True, lost_reason=f"{type(err).__name__}: {err}")
        if "fast" in spent:  # the driver time it took is the fast group's, for the budget
            spent["fast"][gpu.info.index] = self._timer() - started
        if info.lost:
            gpu.lost_reason = info.lost_reason or gpu.lost_reason
            gpu.retry_at = now + LOST_RETRY_SECONDS
            return False
        gpu.info = info
        return True

    def _lost_processes(self, gpu: _GpuState, now: float) -> None:
        """A lost GPU's process list is not this round's either (and ages like a failed read)."""
        reason = f"the GPU is lost: {gpu.lost_reason}"
        gpu.processes.failed(reason, now, self.stats["processes"].interval)

    def _read_group(self, gpu: _GpuState, name: str, now: float) -> None:
        index = gpu.info.index
        backend = self.backend
        assert backend is not None
        if name == "processes":
            gpu.processes.took(backend.read_processes(index), now)
            gpu.errors.pop(name, None)
            # Reading the processes may have found new facts (MIG instances made since).
            gpu.info = backend.device_info(index)
            return
        read = {"fast": backend.read_fast, "slow": backend.read_slow, "pcie": backend.read_pcie}
        # A reading replaces the group's last one whole: a part it no longer has (NVLink on a
        # GPU back without links) is gone, not kept from before.
        reading = read[name](index)
        gpu.readings[name] = reading
        # Replaced each time the group is read: a field that answers again loses its reason.
        gpu.errors[name] = dict(reading.errors)
        for path, reason in reading.errors.items():
            self._warn_once(index, path, reason)

    def _group_failed(self, gpu: _GpuState, name: str, err: Exception, now: float) -> None:
        """A group that failed as a whole shows null fields with the reason, not stale ones;
        the process list, whose absence would read as "no processes", is kept marked stale."""
        reason = f"{type(err).__name__}: {err}"
        gpu.readings.pop(name, None)
        if name == "processes":
            gpu.processes.failed(reason, now, self.stats["processes"].interval)
        gpu.errors[name] = {key: reason for key in GROUP_FIELDS[name]}
        self._warn_once(gpu.info.index, name, reason)

    def _warn_once(self, index: int, path: str, reason: str) -> None:
        """Log a failed reading once per GPU, field and reason; the snapshot says it every time."""
        key = (index, path, reason)
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning("GPU %d %s: %s (null until it answers again)", index, path, reason)

    # -- snapshots ---------------------------------------------------------------------------

    def _gpu_reading(self, gpu: _GpuState, pcie_on: bool) -> GpuReading:
        info = gpu.info
        fast: FastReading | None = gpu.readings.get("fast")
        slow: SlowReading | None = gpu.readings.get("slow")
        link: InterconnectReading | None = gpu.readings.get("pcie")
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
        if not pcie_on:
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
                if group != "pcie" or pcie_on
                for path, reason in errors.items()
            },
            memory=(
                fast.memory if fast is not None else MemoryReading(info.memory_total, None, None)
            ),
            utilization=(
                fast.utilization if fast is not None else UtilizationReading(None, None)
            ),
            temperature=slow.temperature if slow is not None else None,
            power=slow.power if slow is not None else PowerReading(None, info.power_limit),
            fan=slow.fan if slow is not None else None,
            clocks=ClockReading(
                slow.clocks.sm if slow is not None else None,
                slow.clocks.memory if slow is not None else None,
                info.max_clocks.get("sm"),
                info.max_clocks.get("memory"),
            ),
            pcie=link.pcie if link is not None and pcie_on else PcieReading(None, None),
            nvlink=nvlink._replace(links=info.nvlink_links, reason=info.nvlink_reason),
            mig=mig,
            processes=gpu.processes.rows,
            processes_stale=gpu.processes.stale,
        )

    def _publish_round(self, now: float) -> None:
        pcie_on = self.pcie_wanted()
        timestamp = time.time()
        gpus = tuple(self._gpu_reading(g, pcie_on) for g in self._gpus)
        for annotate in self.annotators:
            try:
                annotated = annotate(gpus)
            except Exception:  # noqa: BLE001
                self.log.exception("snapshot annotator failed")
                continue
            if annotated is not None:
                gpus = tuple(annotated)
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

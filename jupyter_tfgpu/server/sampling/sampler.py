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
from typing import Any, Callable

from jupyter_tfgpu.gpu import Backend, DeviceInfo
from jupyter_tfgpu.server.sampling.budget import GroupStats
from jupyter_tfgpu.server.sampling.gpu_state import GpuState
from jupyter_tfgpu.server.sampling.groups import FAST, PROCESSES, SAMPLING_GROUPS
from jupyter_tfgpu.server.sampling.history import History
from jupyter_tfgpu.server.sampling.opening import BackendOpening, log_opened
from jupyter_tfgpu.server.sampling.reading import FailureLog, read_round
from jupyter_tfgpu.server.sampling.schedule import Schedule, Watchers, run_rounds
from jupyter_tfgpu.server.sampling.snapshot import (
    Annotator,
    Snapshot,
    Subscriber,
    annotate,
    gpu_reading,
)
from jupyter_tfgpu.server.sampling.status import cadence, describe, stretch_reason


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
        self._timer = timer  # times each reading (tests inject one)
        self.interval = desired[FAST.name]
        self.history_seconds = history_seconds
        self.budget = budget
        self.log = log or logging.getLogger(__name__)
        self.available = False
        self.reason = unavailable_reason
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
        self._watchers = Watchers()
        self._started_at = time.monotonic()
        self._failures = FailureLog(self.log)
        self._opened = False
        self._first_outcome = threading.Event()  # see ``opening``
        # ``clock`` times its retries
        self._opening = BackendOpening(
            backend,
            warn_unavailable=warn_unavailable,
            clock=clock,
            log=self.log,
            unavailable=self._unavailable,
        )

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
    def versions(self) -> dict[str, str | None]:
        """Driver, library and CUDA versions, where the backend said them."""
        return self._opening.versions

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
        return self._opening.seconds_left()

    def open(self) -> bool:
        """Open the backend; on any failure stay up, unavailable, with the reason and a retry."""
        if self.backend is None:
            self.available = False
            self.reason = self.reason or "GPU monitoring is turned off (TFGPU.backend = 'none')"
            return False
        gpus = self._opening.open(self._stop)
        if gpus is None:
            return False
        capacity = math.ceil(self.history_seconds / self.interval) if self.history_seconds else 0
        self._history = History(capacity, len(gpus))
        self._gpus = gpus
        self._schedule.opened(len(gpus))
        self._opened = True
        self._opening.opened()
        # The GPUs as known without a reading (names, totals; readings null), served before
        # "available" is: GET status and GET gpus never disagree while the first round runs.
        self._publish_round(time.monotonic())
        # Set last: request handlers read these from the event loop while the worker opens.
        self.reason = None
        self.available = True
        return True

    def _unavailable(self, reason: str) -> None:
        self.available = False
        self.reason = reason

    def retry_open(self) -> bool:
        """Open the backend if it failed before and its retry is due; True once it is open."""
        if self._opened:
            return True
        if not self._opening.due():
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
        release = self._watchers.watch()
        self._wake.set()
        return release

    def request_pcie(self) -> None:
        """Keep PCIe sampling on for a while because a REST client asked for it."""
        if self._watchers.request():
            self._wake.set()

    def pcie_wanted(self) -> bool:
        """Whether anybody currently asks for PCIe figures."""
        return self._watchers.wanted()

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
        run_rounds(
            self._schedule,
            self._sample_round,
            self.pcie_wanted,
            self._stop,
            self._wake,
            # opened, and the first snapshot has the GPUs' readings
            round_done=self._first_outcome.set,
            log=self.log,
        )

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

"""The server's hard caps: which ``TFGPU.hard_caps`` mode is in force, and its mechanism, driven
off the event loop for every kernel start, signal and stop.

``start`` (as the server starts) finds what the machine offers (``host.detect``), picks the
mode (``auto``: the first row of ``modes.MODES`` whose needs are met and whose mechanism
starts; else ``off``, saying why) and starts its mechanism. A mode the admin named that cannot
be used is a start-up problem (``problem``): the app stops the server, or with
``TFGPU.on_config_error = 'warn'`` runs with ``off`` and lists it.

Every call into the mechanism runs in one worker thread of this service, one at a time (see
``mechanism.py``). Nothing a mechanism does can keep a kernel from starting: a ``prepare`` that
fails or does not answer in time gives the kernel its framework settings, level ``framework``,
the reason saying what failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import queue
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable

import psutil
from jupyter_core.paths import jupyter_runtime_dir

from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.server.hardcaps.framework import FRAMEWORK_SETTINGS, framework_enforcement
from jupyter_tfgpu.server.hardcaps.host import HostFacts, Probe, detect
from jupyter_tfgpu.server.hardcaps.mechanism import (
    Mechanism,
    MechanismContext,
    Prepared,
    StartingKernel,
)
from jupyter_tfgpu.server.hardcaps import modes
from jupyter_tfgpu.server.hardcaps.modes import AUTO, Mode
from jupyter_tfgpu.server.hardcaps.verified import driver_branch, verified

# How long a kernel start waits for its mechanism before it starts cooperative, how long a
# signal waits for before_signal, and how long the server's start and stop wait for the
# mechanism's (a hung driver or daemon must hold neither).
PREPARE_SECONDS = 30.0
SIGNAL_SECONDS = 10.0
START_SECONDS = 60.0
STOP_SECONDS = 30.0


class Worker:
    """One daemon thread that runs calls one at a time, in order: a call that hangs (a driver
    that does not answer) holds later calls, never the event loop nor the server's exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, call: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``call(*args)`` after the calls before it; its outcome in the future."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._calls.put((future, call, args))
        return future

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as err:  # noqa: BLE001 - the caller gets it
                future.set_exception(err)

    def shutdown(self) -> None:
        """No more calls; the thread ends once those queued ran."""
        with self._lock:
            self._closed = True
            self._calls.put(None)


def _valid(prepared: Any) -> Prepared:
    """A mechanism's answer, checked: a wrong one must not reach a kernel's start."""
    if not isinstance(prepared, Prepared) or not isinstance(prepared.enforcement, CapEnforcement):
        raise TypeError(f"prepare() returned {type(prepared).__name__}, not Prepared")
    if not all(isinstance(a, str) for a in prepared.wrapper):
        raise TypeError("prepare()'s wrapper must be strings")
    if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in prepared.env.items()):
        raise TypeError("prepare()'s env must map names to strings (or None)")
    return prepared


class HardCaps:
    """One per server: the mode in force and its mechanism."""

    def __init__(
        self,
        asked: str,
        runtime_dir: Path | None = None,
        admin: Callable[[], Any] = lambda: None,
        probe: Probe | None = None,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.asked = asked  # TFGPU.hard_caps
        # The folder a mechanism keeps its files in (a daemon's pipe and log folders): its own,
        # beside the kernels' record folder (tfgpu-<pid>, whose entries are kernels); made and
        # removed by the mechanism
        self.runtime_dir = runtime_dir or Path(jupyter_runtime_dir()) / f"tfgpu-hardcaps-{os.getpid()}"
        self._admin = admin
        self.probe = probe or Probe()
        self.log = log or logging.getLogger(__name__)
        self.clock = clock
        self.mode: Mode = modes.mode("off")  # in force
        self.mechanism: Mechanism = self.mode.make(self._context(None))  # type: ignore[misc]
        self.reason: str | None = None  # why the mode in force is not the one asked for
        self.problem: str | None = None  # a named mode that cannot be used: a start-up problem
        self.host: HostFacts | None = None  # None: not looked at (mode off)
        self.lacks: dict[str, list[str]] = {}  # per mode, what this machine lacks for it
        # A kernel's enforcement changed while it runs (told by the mechanism): set by the
        # kernels' launches, which keep it.
        self.on_report: Callable[[str, CapEnforcement], None] = lambda kernel_id, e: None
        self._worker = Worker("tfgpu-hardcaps")
        self._lock = threading.Lock()
        self._abandoned = False  # start() took too long: what it starts late is stopped
        self._held: set[str] = set()  # kernels the mechanism prepared, until released
        self._stopped = False
        # How long a kernel's start and a signal wait for the mechanism (tests shorten them)
        self.prepare_seconds = PREPARE_SECONDS
        self.signal_seconds = SIGNAL_SECONDS

    def _context(self, host: HostFacts | None) -> MechanismContext:
        return MechanismContext(
            host=host or HostFacts(checked_at=0.0),
            runtime_dir=self.runtime_dir,
            admin=self._admin,
            report=lambda kernel_id, enforcement: self.on_report(kernel_id, enforcement),
            log=self.log,
            clock=self.clock,
        )

    @property
    def driver_mode(self) -> bool:
        """Whether a mode with a driver mechanism is in force (not ``off``)."""
        return self.mode.mechanism is not None

    # -- with the server -------------------------------------------------------------------------

    def start(self, seconds: float = START_SECONDS) -> None:
        """Pick the mode and start its mechanism, waiting ``seconds`` at most (blocking: the
        server is not serving yet). Nothing to look at when the admin asked for ``off``."""
        if self.asked == "off":
            return
        future = self._worker.submit(self._start)
        try:
            future.result(timeout=seconds)
        except FutureTimeout:
            with self._lock:
                self._abandoned = True
            self._settle(f"finding what the machine offers took longer than {seconds:g} s", [])
        except Exception as err:  # noqa: BLE001 - a bug here must not start the server unsaid
            self._settle(f"it could not be checked ({type(err).__name__}: {err})", [])

    def _start(self) -> None:
        host = detect(self.probe)
        self.host = host
        self.lacks = {
            row.name: modes.missing(row, host) for row in modes.MODES if row.mechanism is not None
        }
        tried: list[str] = []
        for row in modes.candidates(self.asked):
            lacks = modes.missing(row, host)
            if lacks:
                tried.append(f"{row.name}: {'; '.join(lacks)}")
                continue
            mechanism = row.make(self._context(host))  # type: ignore[misc]
            try:
                mechanism.start()
            except Exception as err:  # noqa: BLE001 - said, and the next mode is tried
                tried.append(f"{row.name}: it did not start ({err})")
                continue
            with self._lock:
                if self._abandoned:
                    mechanism.stop()
                    return
                self.mode, self.mechanism = row, mechanism
            break
        if self.mode.name != self.asked:
            self._settle(None, tried)

    def _settle(self, failure: str | None, tried: list[str]) -> None:
        """The mode asked for is not in force: say why (``auto``: why not the modes before the
        one in force), and make a mode the admin named a start-up problem."""
        if self.asked == AUTO:
            self.reason = "; ".join(tried) or failure
            return
        self.reason = failure or "; ".join(tried) or "it could not be used"
        self.problem = f"'{self.asked}' cannot be used here, so hard caps are off: {self.reason}"

    def stop(self) -> None:
        """Stop the mechanism (blocking; the server's kernels are shut down before); once."""
        if self._stopped:
            return
        self._stopped = True
        if self.driver_mode:
            future = self._worker.submit(self.mechanism.stop)
            try:
                future.result(timeout=STOP_SECONDS)
            except FutureTimeout:
                self.log.error("jupyter-tfgpu: the %s mechanism did not stop within %g s",
                               self.mode.name, STOP_SECONDS)  # fmt: skip
            except Exception:  # noqa: BLE001
                self.log.exception("jupyter-tfgpu: the %s mechanism failed to stop", self.mode.name)
        self._worker.shutdown()

    # -- per kernel ------------------------------------------------------------------------------

    async def prepare(self, kernel: StartingKernel) -> Prepared:
        """What ``kernel`` starts with: its environment's additions, its command's wrapper and
        how each GPU is held; never raises (a failure starts it with framework settings)."""
        if not self.driver_mode:
            return Prepared(framework_enforcement(kernel))
        if self._stopped:
            return Prepared(framework_enforcement(kernel, "the server is stopping"))
        future = self._worker.submit(self._prepare, kernel)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.prepare_seconds)
        except asyncio.TimeoutError:
            self.release(kernel.kernel_id)  # whatever the late prepare sets is undone after it
            why = f"the {self.mode.name} mechanism did not answer within {self.prepare_seconds:g} s"
            self.log.error("jupyter-tfgpu: kernel %s: %s; it starts with framework settings only",
                           kernel.kernel_id, why)  # fmt: skip
            return Prepared(framework_enforcement(kernel, why))

    def _prepare(self, kernel: StartingKernel) -> Prepared:
        try:
            prepared = _valid(self.mechanism.prepare(kernel))
        except Exception as err:  # noqa: BLE001 - the kernel starts cooperative, said so
            why = f"the {self.mode.name} limit could not be set ({err})"
            self.log.warning("jupyter-tfgpu: kernel %s: %s; it starts with framework settings "
                             "only", kernel.kernel_id, why)  # fmt: skip
            self._release(kernel.kernel_id)
            return Prepared(framework_enforcement(kernel, why))
        self._held.add(kernel.kernel_id)
        return prepared

    def release(self, kernel_id: str) -> Future[None] | None:
        """Undo what was set for a kernel that stopped, restarts or failed to start; done in
        the worker (await the future to know it is done). None when nothing could be set."""
        if not self.driver_mode or self._stopped:
            return None
        return self._worker.submit(self._release, kernel_id)

    def _release(self, kernel_id: str) -> None:
        self._held.discard(kernel_id)
        try:
            self.mechanism.release(kernel_id)
        except Exception:  # noqa: BLE001 - logged; the mechanism retries what it keeps
            self.log.exception("jupyter-tfgpu: kernel %s: releasing its %s limit failed",
                               kernel_id, self.mode.name)  # fmt: skip

    async def before_signal(self, kernel_id: str, pid: int | None) -> None:
        """The kernel (its process ``pid`` and descendants) is about to get SIGTERM or SIGKILL:
        let the mechanism act first, waiting ``SIGNAL_SECONDS`` at most."""
        if not self.driver_mode or self._stopped or not pid or kernel_id not in self._held:
            return
        future = self._worker.submit(self._before_signal, kernel_id, pid)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self.signal_seconds)
        except asyncio.TimeoutError:
            self.log.error("jupyter-tfgpu: kernel %s: the %s mechanism took longer than %g s "
                           "before its signal", kernel_id, self.mode.name, self.signal_seconds)  # fmt: skip
        except Exception:  # noqa: BLE001 - the signal goes out regardless
            self.log.exception("jupyter-tfgpu: kernel %s: before its signal", kernel_id)

    def _before_signal(self, kernel_id: str, pid: int) -> None:
        try:
            pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            pids = [pid]
        self.mechanism.before_signal(kernel_id, pids)

    def in_process(self, started: Launch | None, now: Launch, devices: tuple = ()) -> CapEnforcement:
        """How a running kernel's cap is held once it applied ``now`` in-process (only Python
        kernels do): what it started with while the cap and GPUs are the same; else framework
        settings, saying that a driver limit set at its start stays until it restarts."""
        held = started.enforcement if started is not None else None
        if held is not None and (started.memory_limit_mb, started.gpus) == (now.memory_limit_mb, now.gpus):
            return held
        kernel = StartingKernel(now.kernel_id or "", now, "python", tuple(devices))
        mechanisms = sorted({g.mechanism for g in held.gpus} - {None, FRAMEWORK_SETTINGS}) if held else []
        if not mechanisms:
            return framework_enforcement(kernel)
        why = (
            f"it applied a new policy in-process; the {', '.join(mechanisms)} limit set at its "
            "start stays until it restarts"
        )
        return framework_enforcement(kernel, why)

    # -- views -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """As GET status shows it under ``hard_caps``."""
        try:
            state = self.mechanism.status().to_json(self.mode.name)
        except Exception as err:  # noqa: BLE001 - a view must not fail on a mechanism's bug
            state = {"name": self.mode.name, "state": "failed", "detail": repr(err), "facts": {}}
        return {
            "asked": self.asked,
            "in_force": self.mode.name,
            "reason": self.reason,
            "mechanism": state,
            "modes": [
                {
                    "name": row.name,
                    "implemented": row.make is not None,
                    "missing": self.lacks.get(row.name),
                }
                for row in modes.MODES
                if row.mechanism is not None
            ],
            "host": self.host.to_json() if self.host is not None else None,
        }

    def describe(self) -> str:
        """For the start-up log line: how caps are held in this server."""
        if not self.driver_mode:
            said = "off: framework settings and the enforcer hold caps, no driver limit"
        else:
            branch = driver_branch(self.host.driver if self.host is not None else None)
            shown = verified(self.mode.mechanism or "", branch) is not None
            said = (
                f"{self.mode.name}: a driver limit per kernel ({self.mode.mechanism}), "
                + ("shown holding on this driver branch" if shown else "not yet shown on a GPU")
            )
        if self.asked != self.mode.name:
            said += f" (asked for {self.asked}: {self.reason})" if self.reason else f" (asked for {self.asked})"
        return f"hard caps {said}"

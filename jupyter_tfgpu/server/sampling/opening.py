"""Opening the backend, and lost GPUs, again.

A backend that did not open (no library, no GPU yet) is tried again on a back-off, and its
reason is logged once; a GPU that stopped answering, or could not be opened, is opened again
every ``LOST_RETRY_SECONDS`` while the others are read.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Callable, Sequence

from jupyter_tfgpu.gpu import Backend, BackendUnavailable
from jupyter_tfgpu.server.sampling.gpu_state import GpuState

# A lost GPU (or one that could not be opened) is opened again this often, in case it comes
# back (e.g. after a reset).
LOST_RETRY_SECONDS = 30.0
# A backend that failed to open, or found no GPU, is tried again after this long, doubling up
# to the maximum: a driver still loading (or still bringing GPUs up) answers soon, a host with
# no GPU at all costs one try per 5 minutes.
OPEN_RETRY_SECONDS = 5.0
OPEN_RETRY_MAX_SECONDS = 300.0


class BackendOpening:
    """Opens the backend and finds its GPUs; after a failure, says why (once per reason) and
    when it is tried again (5 s, doubling to 5 min)."""

    def __init__(
        self,
        backend: Backend | None,
        *,
        warn_unavailable: bool,
        clock: Callable[[], float],
        log: logging.Logger,
        unavailable: Callable[[str], None],
    ) -> None:
        self.backend = backend
        # The admin named this backend: its absence is a fault to warn about, not a GPU-less host.
        self.warn_unavailable = warn_unavailable
        self._clock = clock
        self.log = log
        self._unavailable = unavailable  # told why the open failed, before the log says it
        self.versions: dict[str, str | None] = {"driver": None, "nvml": None, "cuda": None}
        self.delay: float | None = None  # the wait before the pending retry
        self.at: float | None = None  # when it is due; None: no retry pending
        self._logged: str | None = None  # the reason last logged

    def open(self, stopped: threading.Event) -> list[GpuState] | None:
        """The GPUs the backend found; None when it did not open or found none (``unavailable``
        was told why, and a retry is pending), or when the server stopped meanwhile."""
        backend = self.backend
        assert backend is not None
        try:
            infos = backend.open()
        except Exception as err:  # noqa: BLE001 - no GPU data is a state to report, not a crash
            self._failed(err)
            return None
        if stopped.is_set():
            # The server stopped while a slow open was under way: hand the library straight back.
            backend.close()
            return None
        try:
            self.versions = backend.versions()
        except Exception:  # noqa: BLE001 - versions are informative only
            self.log.debug("could not read GPU versions", exc_info=True)
        if not infos:
            # A driver still bringing its GPUs up: look again, on the open's back-off.
            backend.close()
            self._failed(BackendUnavailable(f"{backend.name}: no GPU found"))
            return None
        return [GpuState.opened(info) for info in infos]

    def _failed(self, err: Exception) -> None:
        """Record why the backend did not open and when to try again; say it."""
        assert self.backend is not None
        if isinstance(err, BackendUnavailable):
            reason = err.reason
        else:
            reason = f"{type(err).__name__}: {err}"
        delay = OPEN_RETRY_SECONDS
        if self.delay is not None:
            delay = min(self.delay * 2, max(OPEN_RETRY_MAX_SECONDS, OPEN_RETRY_SECONDS))
        self.delay = delay
        self.at = self._clock() + delay
        self._unavailable(reason)
        if reason == self._logged:
            self.log.debug("GPU backend %s still unavailable: %s", self.backend.name, reason)
            return
        # Once per reason: a host without GPUs must not fill the log every 5 minutes.
        self._logged = reason
        expected = isinstance(err, BackendUnavailable) and not self.warn_unavailable
        self.log.log(
            logging.INFO if expected else logging.WARNING,
            "GPU backend %s unavailable: %s (trying again in %g s)",
            self.backend.name,
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

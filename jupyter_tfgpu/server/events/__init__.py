"""The enforcement event (its schema is ``enforcement.yaml`` here), and a log file of it alone.

An admin who wants an audit trail of enforcement decisions adds, in jupyter_server_config.py::

    from jupyter_tfgpu.server.events import enforcement_log
    c.EventLogger.handlers = [enforcement_log("/srv/jupyter/tfgpu/enforcement.jsonl")]

jupyter_server sends every event of its bus to every handler (kernel actions, contents, ...);
this one keeps the enforcement events only, one JSON line each. The events are emitted on the
server's event loop, so the file is written by a thread of its own, never by the loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

ENFORCEMENT_EVENT = "https://jupyter-tfgpu.readthedocs.io/events/enforcement/v1"
ENFORCEMENT_SCHEMA = Path(__file__).with_name("enforcement.yaml")

log = logging.getLogger(__name__)


class EnforcementEventsOnly(logging.Filter):
    """Passes the records of enforcement events; jupyter_events logs each event as a dict."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is an enforcement event."""
        return isinstance(record.msg, dict) and record.msg.get("__schema__") == ENFORCEMENT_EVENT


class EnforcementLog(QueueHandler):
    """Appends each enforcement event to ``path`` as one JSON line, from a thread of its own.

    The file (and its folder, if missing) is made with the first event. A folder this user
    cannot make or write to is said at start (a WARNING), and a write that fails is logged once
    (an ERROR) instead of stopping anything.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(queue.SimpleQueue())
        self.path = os.path.abspath(path)
        self.addFilter(EnforcementEventsOnly())
        self._file = _QuietFileHandler(self.path)
        self._listener = QueueListener(self.queue, self._file, respect_handler_level=False)
        self._listener.start()
        self._open = True
        self._lock_writer = threading.Lock()
        atexit.register(self.close)
        if not _creatable(os.path.dirname(self.path)):
            log.warning(
                "jupyter-tfgpu: the enforcement log %s cannot be written (its folder cannot be "
                "created or written by this user): no enforcement event is recorded until it can",
                self.path,
            )

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 - logging's name
        """jupyter_events gives its handlers its JSON formatter: the file writes with it."""
        super().setFormatter(fmt)
        self._file.setFormatter(fmt)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Hand the record to the writer thread as it is (the file formats it)."""
        return record

    def flush(self) -> None:
        """Wait until every event handed over so far is written."""
        with self._lock_writer:
            if self._open:
                self._listener.stop()  # writes what is queued, then ends the thread
                self._listener.start()
        self._file.flush()

    def close(self) -> None:
        """Write what is queued, then close the file (safe to call twice)."""
        with self._lock_writer:
            if self._open:
                self._open = False
                self._listener.stop()
        self._file.close()
        super().close()


class _QuietFileHandler(logging.FileHandler):
    """A file handler that opens its file on the first record and logs a failed write once."""

    def __init__(self, path: str) -> None:
        super().__init__(path, delay=True, encoding="utf-8")
        self._failed = False

    def _open(self):  # noqa: ANN202 - logging's own signature
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record; opening the file may fail too (a missing folder), not only writing."""
        try:
            super().emit(record)
        except Exception:  # noqa: BLE001 - the writer thread must outlive a bad disk
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Say once that the audit trail is not written, with the reason."""
        if not self._failed:
            self._failed = True
            log.error("jupyter-tfgpu: cannot write the enforcement log %s", self.baseFilename,
                      exc_info=True)  # fmt: skip


def _creatable(folder: str) -> bool:
    """Whether this user can write in ``folder``, or make it where it is missing."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def enforcement_log(path: str | os.PathLike[str]) -> EnforcementLog:
    """A handler for ``c.EventLogger.handlers`` that writes the enforcement events to ``path``."""
    return EnforcementLog(path)

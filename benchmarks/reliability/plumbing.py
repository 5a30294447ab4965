"""What the sections share: units for the report, the server's figures, a well-behaved client."""

from __future__ import annotations

import collections
import http.client
import time
from typing import Any, Callable

import psutil

from _harness import FakeServer, execute, percentile

MB = 2**20


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, rounded for the report."""
    return None if seconds is None else round(seconds * 1000, 2)


def mib(nbytes: int | None) -> float | None:
    """Bytes to MiB, rounded for the report."""
    return None if nbytes is None else round(nbytes / MB, 1)


def server_figures(server: FakeServer) -> dict[str, Any]:
    """RSS (MiB), threads and child processes of the server process now."""
    proc = psutil.Process(server.pid)
    return {
        "rss_mib": mib(proc.memory_info().rss),
        "threads": proc.num_threads(),
        "children": len(proc.children(recursive=True)),
    }


class Poller:
    """A well-behaved client: GETs its paths in turn on one keep-alive connection, paced."""

    def __init__(self, server: FakeServer, paths: list[str], pace: float = 0.02):
        self.server, self.paths, self.pace = server, paths, pace
        self.by_status: collections.Counter[str] = collections.Counter()
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.rss_peak = 0
        self.on_answer: Callable[[str, Any, bytes], None] | None = None

    def run(self, until: Callable[[], bool], max_seconds: float, max_requests: int = 100_000):
        """Poll until ``until()`` or the time or count bound; sample the server's RSS meanwhile."""
        proc = psutil.Process(self.server.pid)
        deadline = time.monotonic() + max_seconds
        next_rss = 0.0
        for i in range(max_requests):
            now = time.monotonic()
            if until() or now >= deadline:
                break
            if now >= next_rss:
                self.rss_peak = max(self.rss_peak, proc.memory_info().rss)
                next_rss = now + 0.25
            path = self.paths[i % len(self.paths)]
            try:
                status, body, seconds = self.server.request(path)
            except (OSError, http.client.HTTPException) as err:
                status, body, seconds = type(err).__name__, b"", None
            self.by_status[str(status)] += 1
            if seconds is not None:
                self.latencies[path].append(seconds)
            if self.on_answer is not None:
                self.on_answer(path, status, body)
            time.sleep(self.pace)

    def summary(self) -> dict[str, Any]:
        """Requests served (200), the rest by status, latency p50/p99/max overall and per path."""
        every = [s for times in self.latencies.values() for s in times]
        return {
            "served": self.by_status.get("200", 0),
            "errors": sum(n for status, n in self.by_status.items() if status != "200"),
            "by_status": dict(self.by_status),
            "p50_ms": ms(percentile(every, 50)),
            "p99_ms": ms(percentile(every, 99)),
            "max_ms": ms(max(every)) if every else None,
            "p99_ms_by_path": {p: ms(percentile(t, 99)) for p, t in self.latencies.items()},
        }


def ready(server: FakeServer, kernel_id: str, code: str = "print('ready')") -> bool:
    """Run ``code`` in the kernel (bounded): True once it ran, as an opened notebook's kernel."""
    try:
        execute(server, kernel_id, code, timeout=90)
        return True
    except Exception:  # noqa: BLE001 - counted, not raised
        return False

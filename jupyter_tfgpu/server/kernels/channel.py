"""The channel between a kernel and the server, scoped to that kernel.

Code inside a kernel (the framework reporter, the ``%tfgpu`` magic, widgets) talks to the
server with a token made for that kernel alone at each (re)start and handed to it in
``TFGPU_KERNEL_TOKEN``; the server's own token is never put in a kernel's environment. A kernel
token opens only the ``tfgpu/api/kernel/...`` routes, and those act on the notebook of the
kernel the token was made for: there is no path or id in them to name another one.

What that does not hold against: every kernel runs as the server's OS user, and a process can
read the environment of any other process of its user (``/proc/<pid>/environ``). So code in
one notebook that goes looking can take a sibling kernel's token and act as that kernel on this
channel: read its view, change its notebook's policy (within the admin's caps, which apply to
every write whoever makes it) and report figures for it. It cannot reach the user routes, lift a
cap, change the enforcement, or reach another server's kernels.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from jupyter_tfgpu.protocol import AUTH_SCHEME, REPORTING_FRAMEWORKS

# How long a report counts as current; a reporter sends every few seconds.
REPORT_TTL = 30.0

# Everything a kernel sends is bounded: kernel code is untrusted, and one kernel must not be able
# to exhaust the server's memory or put a figure in that breaks arithmetic for everyone.
MAX_BODY_BYTES = 64 * 1024
# 1 PiB: more than any GPU holds, and small enough that sums and float conversions stay exact.
MAX_BYTES = 2**50
MAX_UUID_CHARS = 128  # "GPU-" / "MIG-" plus a UUID is 40; room for odd drivers
MAX_DEVICES = 64  # 8 GPUs x 7 MIG slices fits
MAX_PID = 2**31 - 1  # a PID is a positive C int
# Distinct (framework, pid) entries kept per kernel; the oldest goes first. A kernel and its
# ``!python`` children each report; 64 live reporting processes is far past real use.
MAX_REPORTERS = 64


@dataclass(frozen=True)
class ChannelLimit:
    """A per-kernel budget of one kind of kernel-channel request: ``burst`` at once, refilled
    evenly over ``window`` seconds."""

    what: str  # the requests counted, as a plural noun: "reports", "reads"
    burst: int
    window: float

    def describe(self) -> str:
        """``too many policy changes: at most 30 per 60 s per kernel``."""
        return f"too many {self.what}: at most {self.burst} per {self.window:g} s per kernel"


# Every kernel-channel request counts against one of these, per kernel. Kernel code is untrusted:
# without them, one kernel looping on PUT kernel/policy rewrites (and fsyncs) the store as fast as
# the disk allows and has every open view re-read its kernels each time. The budgets are far past
# what the kernel side itself sends, so that only a loop in the notebook's own code meets them:
CHANNEL_LIMITS: dict[str, ChannelLimit] = {
    # The reporter sends one report per framework and process every few seconds.
    "report": ChannelLimit("reports", 60, 10.0),
    # PUT and DELETE kernel/policy: each is a store write and a push to every open view. A person
    # saves a few times a minute; "Run All" over a notebook runs its few %tfgpu policy cells; a
    # loop that sets a policy per experiment gets one change every 2 s once the burst is spent.
    "policy": ChannelLimit("policy changes", 30, 60.0),
    # POST kernel/applied follows a policy change that was applied in-process: at most one each.
    "applied": ChannelLimit("applied notices", 30, 60.0),
    # GET kernel/status, kernel/policy, kernel/history: each is JSON made on the event loop (or a
    # worker thread). The PolicyEditor and each %tfgpu watch panel read once a second by default:
    # ten of them in one kernel, or one panel at --interval 0.1, fit.
    "read": ChannelLimit("reads", 100, 10.0),
}
# Kept for the reporter's budget, which tests and docs name.
REPORT_BURST = CHANNEL_LIMITS["report"].burst
REPORT_WINDOW = CHANNEL_LIMITS["report"].window


@dataclass(frozen=True)
class KernelIdentity:
    """The "user" behind a kernel-channel request: one kernel of this server."""

    kernel_id: str
    username: str = "kernel"

    @property
    def name(self) -> str:
        """Shown in logs."""
        return f"kernel {self.kernel_id}"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class KernelTokens:
    """Issues one secret per kernel launch and checks it; keeps only hashes."""

    def __init__(self) -> None:
        self._hashes: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def issue(self, kernel_id: str) -> str:
        """A fresh token for a kernel about to (re)start; the previous one stops working."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._hashes[kernel_id] = _digest(token)
        return token

    def revoke(self, kernel_id: str) -> None:
        """The kernel is gone."""
        with self._lock:
            self._hashes.pop(kernel_id, None)

    def kernel_ids(self) -> set[str]:
        """The kernels a token is held for."""
        with self._lock:
            return set(self._hashes)

    def identify(self, authorization: str | None) -> KernelIdentity | None:
        """The kernel an ``Authorization: tfgpu-kernel <token>`` header belongs to."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != AUTH_SCHEME or not token:
            return None
        presented = _digest(token.strip())
        with self._lock:
            items = list(self._hashes.items())
        for kernel_id, expected in items:
            if hmac.compare_digest(presented, expected):
                return KernelIdentity(kernel_id)
        return None


class RateLimiter:
    """A token bucket per kernel: ``burst`` requests at once, refilled over ``window`` seconds."""

    def __init__(
        self, burst: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.rate = burst / window
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # kernel id -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, kernel_id: str) -> float:
        """Take one request from the kernel's bucket: 0 when allowed, else the seconds until
        the bucket holds one again (the request is not counted)."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(kernel_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[kernel_id] = (tokens - 1.0 if allowed else tokens, now)
        return 0.0 if allowed else (1.0 - tokens) / self.rate

    def allow(self, kernel_id: str) -> bool:
        """Take one request from the kernel's bucket; False when it is empty."""
        return self.take(kernel_id) == 0.0

    def kernel_ids(self) -> set[str]:
        """The kernels a bucket is kept for."""
        with self._lock:
            return set(self._buckets)

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone."""
        with self._lock:
            self._buckets.pop(kernel_id, None)


class ChannelLimiter:
    """One rate limiter per kind of kernel-channel request (``CHANNEL_LIMITS``), per kernel."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._limiters = {
            name: RateLimiter(limit.burst, limit.window, clock)
            for name, limit in CHANNEL_LIMITS.items()
        }

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the buckets refill by."""
        return next(iter(self._limiters.values())).clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        for limiter in self._limiters.values():
            limiter.clock = clock

    def take(self, kernel_id: str, kind: str) -> float:
        """Count one ``kind`` request of the kernel: 0 when allowed, else seconds to wait."""
        return self._limiters[kind].take(kernel_id)

    def kernel_ids(self) -> set[str]:
        """The kernels any bucket is kept for."""
        return set().union(*(limiter.kernel_ids() for limiter in self._limiters.values()))

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone."""
        for limiter in self._limiters.values():
            limiter.forget(kernel_id)


class KernelReports:
    """The framework figures each kernel last reported (for attribution in containers)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # kernel id -> (framework, pid) -> report: each process of a kernel (the kernel itself,
        # ``!python train.py``) reports on its own and must not overwrite the others
        self._reports: dict[str, dict[tuple[str, int | None], dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.clock = clock
        # Every kernel-channel request's budget, not only the reports': kept here so that it is
        # forgotten with the kernel, as its reports are (KernelRegistry.forget and prune).
        self.limiter = ChannelLimiter()

    def put(self, kernel_id: str, report: dict[str, Any]) -> None:
        """Store one process's latest report for one framework, stamped with the server's clock."""
        now = self.clock()
        key = (report["framework"], report.get("pid"))
        with self._lock:
            reports = self._reports.setdefault(kernel_id, {})
            for old in [k for k, r in reports.items() if now - r["received"] > REPORT_TTL]:
                del reports[old]  # processes that stopped reporting (exited) do not pile up
            while key not in reports and len(reports) >= MAX_REPORTERS:
                del reports[min(reports, key=lambda k: reports[k]["received"])]
            reports[key] = {**report, "received": now}

    def count(self, kernel_id: str) -> int:
        """How many (framework, pid) entries are stored for a kernel."""
        with self._lock:
            return len(self._reports.get(kernel_id, {}))

    def get(self, kernel_id: str) -> dict[str, Any] | None:
        """A kernel's recent figures, summed over its processes and frameworks: {uuid: bytes}."""
        now = self.clock()
        with self._lock:
            reports = [
                r for r in self._reports.get(kernel_id, {}).values() if now - r["received"] <= REPORT_TTL
            ]
        if not reports:
            return None
        devices: dict[str, int] = {}
        for report in reports:
            for device in report["devices"]:
                held = device.get("reserved") if device.get("reserved") is not None else device.get("in_use")
                if held is not None:
                    devices[device["uuid"]] = devices.get(device["uuid"], 0) + held
        return {
            "frameworks": sorted({r["framework"] for r in reports}),
            "devices": devices,
            "received": max(r["received"] for r in reports),
        }

    def current(self) -> dict[str, dict[str, Any]]:
        """Every kernel's recent figures, by kernel id."""
        with self._lock:
            ids = list(self._reports)
        return {k: r for k in ids if (r := self.get(k)) is not None}

    def kernel_ids(self) -> set[str]:
        """The kernels anything is kept for."""
        with self._lock:
            kept = set(self._reports)
        return kept | self.limiter.kernel_ids()

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone (or restarted: what its previous process reported no longer holds)."""
        with self._lock:
            self._reports.pop(kernel_id, None)
        self.limiter.forget(kernel_id)


def validate_report(data: Any) -> dict[str, Any]:
    """Check a reporter's message: ``{"framework", "pid", "devices": [{"uuid", "reserved", ...}]}``.

    Raises ValueError("<field>: <why>") naming the first bad field.
    """
    if not isinstance(data, dict):
        raise ValueError("body: expected a JSON object")
    framework = data.get("framework")
    if framework not in REPORTING_FRAMEWORKS:
        raise ValueError("framework: expected tensorflow, torch or jax")
    pid = data.get("pid")
    if pid is not None and (not _is_int(pid) or not 0 < pid <= MAX_PID):
        raise ValueError(f"pid: expected a process id, a positive integer up to {MAX_PID}")
    devices = data.get("devices")
    if not isinstance(devices, list) or len(devices) > MAX_DEVICES:
        raise ValueError(f"devices: expected a list (at most {MAX_DEVICES})")
    clean = []
    for n, device in enumerate(devices):
        uuid = device.get("uuid") if isinstance(device, dict) else None
        if not isinstance(uuid, str) or not 0 < len(uuid) <= MAX_UUID_CHARS:
            raise ValueError(
                f"devices[{n}].uuid: expected a string of 1 to {MAX_UUID_CHARS} characters"
            )
        row: dict[str, Any] = {"uuid": uuid}
        for field in ("reserved", "in_use", "peak"):
            value = device.get(field)
            if value is not None and (not _is_int(value) or not 0 <= value <= MAX_BYTES):
                raise ValueError(
                    f"devices[{n}].{field}: expected bytes as an integer from 0 to {MAX_BYTES}"
                )
            row[field] = value
        clean.append(row)
    return {"framework": framework, "devices": clean, "pid": pid}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""The channel between a kernel and the server, scoped to that kernel.

Code inside a kernel (the framework reporter, the ``%tfgpu`` magic, widgets) talks to the
server with a token made for that kernel alone at each (re)start and handed to it in
``TFGPU_KERNEL_TOKEN``; the server's own token is never put in a kernel's environment. A kernel
token opens only the ``tfgpu/api/kernel/...`` routes, and those act on the kernel's own
notebook only: a kernel cannot read or change another notebook's policy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

AUTH_SCHEME = "tfgpu-kernel"
# How long a report counts as current; a reporter sends every few seconds.
REPORT_TTL = 30.0


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


class KernelReports:
    """The framework figures each kernel last reported (for attribution in containers)."""

    def __init__(self) -> None:
        # kernel id -> (framework, pid) -> report: each process of a kernel (the kernel itself,
        # ``!python train.py``) reports on its own and must not overwrite the others
        self._reports: dict[str, dict[tuple[str, int | None], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def put(self, kernel_id: str, report: dict[str, Any]) -> None:
        """Store one process's latest report for one framework, stamped with the server's clock."""
        now = time.time()
        with self._lock:
            reports = self._reports.setdefault(kernel_id, {})
            for key in [k for k, r in reports.items() if now - r["received"] > REPORT_TTL]:
                del reports[key]  # processes that stopped reporting (exited) do not pile up
            reports[(report["framework"], report.get("pid"))] = {**report, "received": now}

    def get(self, kernel_id: str) -> dict[str, Any] | None:
        """A kernel's recent figures, summed over its processes and frameworks: {uuid: bytes}."""
        now = time.time()
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

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone."""
        with self._lock:
            self._reports.pop(kernel_id, None)


def validate_report(data: Any) -> dict[str, Any]:
    """Check a reporter's message: ``{"framework": str, "devices": [{"uuid", "reserved", "in_use"}]}``."""
    if not isinstance(data, dict):
        raise ValueError("body: expected a JSON object")
    framework = data.get("framework")
    if framework not in ("tensorflow", "torch", "jax"):
        raise ValueError("framework: expected tensorflow, torch or jax")
    devices = data.get("devices")
    if not isinstance(devices, list) or len(devices) > 64:
        raise ValueError("devices: expected a list (at most 64)")
    clean = []
    for n, device in enumerate(devices):
        if not isinstance(device, dict) or not isinstance(device.get("uuid"), str):
            raise ValueError(f"devices[{n}].uuid: expected a string")
        row: dict[str, Any] = {"uuid": device["uuid"]}
        for field in ("reserved", "in_use", "peak"):
            value = device.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"devices[{n}].{field}: expected bytes as a non-negative integer")
            row[field] = value
        clean.append(row)
    return {"framework": framework, "devices": clean, "pid": data.get("pid") if isinstance(data.get("pid"), int) else None}

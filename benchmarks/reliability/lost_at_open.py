"""Section 7: one of 8 GPUs fails at open; when the other 7 are served, and when it is back."""

from __future__ import annotations

import collections
import json
import time
from typing import Any

from _harness import FakeServer, call
from jupyter_tfgpu.server.sampling.opening import LOST_RETRY_SECONDS

# (name, the fault on one GPU from before the server starts)
LOST_AT_OPEN = {
    "timeout": {"name": "nvmlDeviceGetMemoryInfo", "error": "TIMEOUT", "delay": 1.0},
    "lost": {"name": "nvmlDeviceGetHandleByIndex", "error": "GPU_IS_LOST", "delay": 0.0},
}


def served(row: dict[str, Any]) -> bool:
    """A GPU row with its readings: not lost, memory and temperature read."""
    return (not row.get("lost") and row.get("temperature") is not None
            and (row.get("memory") or {}).get("used") is not None)  # fmt: skip


def lost_at_open_round(kind: str, p: dict[str, Any]) -> dict[str, Any]:
    """8 GPUs, one failing at open: when GET gpus lists 7 served and the lost one with its
    reason, and, once the fault is cleared, when that GPU is served (its 30 s re-probe)."""
    gpu = p["lost_gpu"]
    fault = {**LOST_AT_OPEN[kind], "gpu": gpu}
    launcher = ["--gpus", "8", "--start-faults", json.dumps([fault])]
    with FakeServer(launcher=launcher, wait_for_sample=False) as server:
        t0 = server.started_at
        reasons: collections.Counter[str] = collections.Counter()
        listed = rows = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = server.get("tfgpu/api/gpus").get("gpus") or []
            if len(rows) == 8:
                others = [r for i, r in enumerate(rows) if i != gpu]
                said = rows[gpu].get("lost") and rows[gpu].get("lost_reason")
                if said and all(served(r) for r in others):
                    listed = time.monotonic()
                    break
            else:
                reasons[str(server.get("tfgpu/api/status").get("reason"))] += 1
            time.sleep(0.02)
        status = server.get("tfgpu/api/status")
        lost_row = {k: rows[gpu].get(k) for k in ("index", "lost", "lost_reason")} if rows else None
        log_lines = [line.strip() for line in server.log_tail(200).splitlines()
                     if f"GPU {gpu}:" in line]  # fmt: skip
        _, cleared, _ = call(server, "POST", "bench/faults", {"clear": True})
        cleared_at = time.monotonic()
        back = None
        while time.monotonic() - cleared_at < p["reprobe_wait_s"]:
            rows = server.get("tfgpu/api/gpus").get("gpus") or []
            if len(rows) == 8 and all(served(r) for r in rows):
                back = time.monotonic()
                break
            time.sleep(0.1)
    return {
        "fault": fault,
        "faults_raised": (cleared or {}).get("faults_raised"),
        "serving_s": round(server.ready_at - t0, 2),
        "listed_s": round(listed - t0, 2) if listed else None,
        "listed_after_serving_s": round(listed - server.ready_at, 2) if listed else None,
        "status_reasons_before": dict(reasons),
        "status_when_listed": {k: status.get(k) for k in ("available", "device_count", "reason")},
        "lost_row": lost_row,
        "log": log_lines[:2],
        "served_after_clear_s": round(back - cleared_at, 2) if back else None,
        "served_after_listed_s": round(back - listed, 2) if back and listed else None,
        "wait_bound_s": p["reprobe_wait_s"],
    }


def section_lost_at_open(p: dict[str, Any]) -> dict[str, Any]:
    """One of 8 GPUs fails at open (a timeout, or lost); the other 7 are served."""
    return {
        "lost_retry_s": LOST_RETRY_SECONDS,
        "rounds": {kind: lost_at_open_round(kind, p) for kind in p["lost_kinds"]},
    }

"""Section 2: NVML faults mid-run; what a polling client sees, during and after."""

from __future__ import annotations

import collections
import json
import time
from typing import Any

from _harness import FakeServer, call

from .plumbing import Poller

# NVML faults of section 2: (function, NVML_ERROR_ suffix, GPU or None for all, hang seconds).
FAULTS = [
    ("nvmlDeviceGetTemperature", "TIMEOUT", None, 0.0),
    ("nvmlDeviceGetPowerUsage", "TIMEOUT", None, 0.0),
    ("nvmlDeviceGetComputeRunningProcesses_v3", "UNKNOWN", 3, 0.05),
    ("nvmlDeviceGetGraphicsRunningProcesses_v3", "TIMEOUT", None, 0.02),
]


def section_faults(p: dict[str, Any]) -> dict[str, Any]:
    """Faults on several NVML calls for a while; what the client sees, during and after."""
    extra = ["--TFGPU.slow_interval=1", "--TFGPU.process_interval=1", "--TFGPU.nvml_budget=0.2"]
    with FakeServer(extra=extra) as server:
        rows_seen = collections.Counter()
        reasons: collections.Counter[str] = collections.Counter()
        last_rows: list[dict[str, Any]] = []

        def on_answer(path: str, status: Any, body: bytes) -> None:
            if path != "tfgpu/api/gpus" or status != 200:
                return
            rows = json.loads(body)["gpus"]
            last_rows[:] = rows
            rows_seen["rows"] += len(rows)
            rows_seen["with_errors"] += sum(1 for r in rows if r.get("errors"))
            rows_seen["lost"] += sum(1 for r in rows if r.get("lost"))
            for r in rows:
                for field, reason in (r.get("errors") or {}).items():
                    reasons[f"{field}: {reason}"] += 1

        paths = ["tfgpu/api/status", "tfgpu/api/gpus", "metrics"]
        baseline = Poller(server, paths)
        baseline.run(until=lambda: False, max_seconds=3)
        inject = [
            {"name": name, "error": error, "gpu": gpu, "delay": delay}
            for name, error, gpu, delay in FAULTS
        ]
        status, injected, _ = call(server, "POST", "bench/faults", {"inject": inject})
        during = Poller(server, paths)
        during.on_answer = on_answer
        during.run(until=lambda: False, max_seconds=p["fault_s"])
        during_rows = dict(rows_seen)
        _, raised, _ = call(server, "GET", "bench/faults")
        _, cleared, _ = call(server, "POST", "bench/faults", {"clear": True})
        cleared_at = time.monotonic()

        def clean(rows: list[dict[str, Any]]) -> bool:
            return bool(rows) and all(
                not r.get("errors") and not r.get("lost") and r.get("temperature") is not None
                and (r.get("power") or {}).get("draw") is not None and r.get("processes")
                for r in rows
            )  # fmt: skip

        clean_at: dict[str, float] = {}

        def after_answer(path: str, status: Any, body: bytes) -> None:
            on_answer(path, status, body)
            if "not lost" not in clean_at and clean([r for r in last_rows if not r.get("lost")]):
                clean_at["not lost"] = time.monotonic() - cleared_at

        last_rows.clear()
        after = Poller(server, paths)
        after.on_answer = after_answer
        after.run(until=lambda: clean(last_rows), max_seconds=p["recover_s"])
        back = clean(last_rows)
        metrics_status, _, _ = server.request("metrics")
    return {
        "fault_s": p["fault_s"],
        "faults": inject,
        "inject_status": status,
        "faults_raised": cleared.get("faults_raised") if cleared else None,
        "faults_raised_by_function": {
            k: v["raised"] for k, v in (raised or {}).get("active", {}).items()
        },
        "client_baseline": baseline.summary(),
        "client_during_faults": during.summary(),
        "gpu_rows_during_faults": during_rows,
        "error_reasons_seen": dict(reasons.most_common(8)),
        "client_after_clear": after.summary(),
        "fields_back_after_clear": back,
        "seconds_to_recover": round(time.monotonic() - cleared_at, 2) if back else None,
        "fields_back_on_gpus_not_lost_s": round(clean_at["not lost"], 2) if clean_at else None,
        "lost_gpus_after_clear": [r.get("index") for r in last_rows if r.get("lost")],
        "recover_window_s": p["recover_s"],
        "last_rows_after_clear": [
            {k: r.get(k) for k in ("index", "lost", "errors", "temperature")}
            for r in last_rows
            if r.get("errors") or r.get("lost")
        ],
        "config": extra,
        "metrics_after": metrics_status,
        "injected_ack": injected is not None,
    }

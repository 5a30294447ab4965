"""The reported figures of bench_scale.py, made from the storm's raw timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _harness import percentile

STALE_AFTER_STORM_S = 30.0  # staleness is judged over the storm and this long after it


def _ms(values: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max in milliseconds of latencies in seconds."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 2)

    return {
        "n": len(values), "p50_ms": r(percentile(values, 50)), "p99_ms": r(percentile(values, 99)),
        "max_ms": r(max(values)) if values else None,
    }  # fmt: skip


def _rate(counters: dict[str, Any], a: str, b: str) -> dict[str, float | None]:
    """Driver ms per second and server CPU (% of one core) between two marks."""
    if a not in counters or b not in counters:
        return {}
    x, y = counters[a], counters[b]
    wall = max(y["t"] - x["t"], 1e-9)
    host_total = max(y["host_total"] - x["host_total"], 1e-9)
    return {
        "seconds": round(wall, 1),
        "driver_ms_per_s": round(1000 * (y["call_time"] - x["call_time"]) / wall, 2),
        "server_cpu_pct": round(100 * (y["cpu"] - x["cpu"]) / wall, 1),
        # Every process on the host (kernels, clients, anything else): % of all cores.
        "host_busy_pct": round(100 * (y["host_busy"] - x["host_busy"]) / host_total, 1),
        # What processes outside this run took: host busy less this run's own CPU time.
        "others_pct": round(
            100 * ((y["host_busy"] - x["host_busy"]) - (y["run_cpu"] - x["run_cpu"])) / host_total,
            1,
        ),
    }


def figures(raw: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """The reported figures from the raw timeline."""
    marks, records = raw["marks"], raw["records"]
    t0, storm_end, end = marks["storm_start"], marks["storm_end"], marks["end"]
    stale_end = storm_end + STALE_AFTER_STORM_S

    def of(kind: str, a: float, b: float) -> list[dict[str, Any]]:
        return [r for r in records if r["k"] == kind and a <= r["t"] <= b]

    # Fast cadence and its recovery.
    sampler = [r for r in records if r["k"] == "sampler" and r.get("fast") is not None]
    cfg = sampler[0]["fast_cfg"] if sampler else None
    after_start = [r for r in sampler if r["t"] >= t0]
    stretched = [r for r in after_start if r["fast"] > r["fast_cfg"] * 1.01]
    recovery_s: float | None = 0.0
    if stretched:
        last = stretched[-1]["t"]
        later = [r for r in after_start if r["t"] > last]
        recovery_s = round(max(0.0, later[0]["t"] - storm_end), 1) if later else None
    fast_at_storm_end = next((r["fast"] for r in reversed(sampler) if r["t"] <= storm_end), None)
    baseline = [r for r in sampler if r["t"] < t0]
    # Snapshot age seen by GET gpus; and the real gaps between snapshots (stream messages).
    gpus_window = [r for r in of("gpus", t0, stale_end) if r.get("ts")]
    ages = [r["t"] - r["ts"] for r in gpus_window]
    gpus_run = [r for r in of("gpus", t0, end) if r.get("ts")]
    oldest = max(gpus_run, key=lambda r: r["t"] - r["ts"], default=None)
    # Snapshots taken from the storm's start to the end (distinct timestamps): the real cadence.
    taken = sorted(
        {r["ts"] for r in gpus_run}
        | {r["ts"] for r in records if r["k"] == "ws" and r.get("ts") and r["t"] >= t0}
    )
    taken_gaps = [(b - a, b) for a, b in zip(taken, taken[1:])]
    longest = max(taken_gaps, default=None)
    ws = [r for r in records if r["k"] == "ws" and "bytes" in r]
    ws_storm = [r for r in ws if t0 <= r["t"] <= stale_end]
    gaps = [b["t"] - a["t"] for a, b in zip(ws_storm, ws_storm[1:])]
    long_gaps_after = [
        b["t"]
        for a, b in zip(ws, ws[1:])
        if b["t"] > storm_end and b["t"] - a["t"] > 1.5 * (cfg or 1)
    ]
    # Attribution: the first kernels reading in which every ready kernel holds memory.
    ready = [k for k in raw["kernels"] if "ready_at" in k]
    ids = {k["kernel_id"] for k in ready}
    all_held = next(
        (r["t"] for r in of("kernels", t0, end) if ids and ids <= set(r.get("held") or [])), None
    )
    last_added = max((k["added_at"] for k in ready), default=None)
    first_held: dict[str, float] = {}
    for r in of("kernels", t0, end):
        for kid in r.get("held") or []:
            first_held.setdefault(kid, r["t"])
    waits = [
        first_held[k["kernel_id"]] - k["added_at"] for k in ready if k["kernel_id"] in first_held
    ]
    sizes = [r["bytes"] for r in ws if r["t"] >= t0]
    counters = raw["counters"]
    nvml_windows = {
        "baseline": _rate(counters, "baseline", "storm_start"),
        "storm": _rate(counters, "storm_start", "storm_end"),
        "recovery": _rate(counters, "storm_end", "settled"),
        "after": _rate(counters, "settled", "end"),
        "storm_to_end": _rate(counters, "storm_start", "end"),
    }
    return {
        "kernels": {
            "started": len(raw["kernels"]),
            "ready": len(ready),
            "errors": [k["error"] for k in raw["kernels"] if "error" in k][:5],
            "storm_s": round(storm_end - t0, 1),
            "session_s_max": max((k.get("session_s", 0) for k in ready), default=None),
            "bootstrap_folders": sorted({str(Path(k["bootstrap"]).parent) for k in ready}),
        },  # fmt: skip
        "fast_cadence": {
            "configured_s": cfg,
            "baseline_interval_s": max((r["fast"] for r in baseline), default=None),
            "interval_at_storm_end_s": fast_at_storm_end,
            "max_interval_s": max((r["fast"] for r in after_start), default=None),
            "max_cost_ms": max((r["fast_cost"] for r in after_start), default=None),
            "baseline_cost_ms": max((r["fast_cost"] for r in baseline), default=None),
            "recovery_s": recovery_s,
            "recovered": recovery_s is not None,
            "waited_s": round(marks["settled"] - storm_end, 1),
            "max_gap_between_messages_s": round(max(gaps), 2) if gaps else None,
            "last_long_gap_after_storm_end_s": (
                round(long_gaps_after[-1] - storm_end, 1) if long_gaps_after else 0.0
            ),
        },
        "processes_cadence": {
            "configured_s": raw["sampler_at_end"]["groups"]["processes"]["configured_interval"],
            "baseline_interval_s": max((r["proc"] for r in baseline), default=None),
            "max_interval_s": max((r["proc"] for r in after_start), default=None),
            "interval_at_end_s": raw["sampler_at_end"]["groups"]["processes"]["interval"],
            "cost_ms_at_end": raw["sampler_at_end"]["groups"]["processes"]["cost_ms"],
            "rounds_storm_to_end": (
                (after_start[-1]["proc_calls"] - after_start[0]["proc_calls"])
                if after_start
                else None
            ),
            "first_round_after_storm_start_s": next(
                (
                    round(r["t"] - t0, 1)
                    for r in after_start
                    if r["proc_calls"] > after_start[0]["proc_calls"]
                ),
                None,
            ),
        },
        "staleness": {
            "window": f"storm start to {STALE_AFTER_STORM_S:g} s after its end",
            "polls": len(ages),
            "max_s": round(max(ages), 2) if ages else None,
            "p99_s": round(percentile(ages, 99), 2) if ages else None,
            "p50_s": round(percentile(ages, 50), 2) if ages else None,
            "errors": sum(1 for r in of("gpus", t0, stale_end) if r["st"] != 200),
            "whole_run": {
                "window": "storm start to the end of the run",
                "polls": len(gpus_run),
                "max_s": round(oldest["t"] - oldest["ts"], 2) if oldest else None,
                "max_at_after_storm_end_s": round(oldest["t"] - storm_end, 1) if oldest else None,
                "p99_s": (
                    round(percentile([r["t"] - r["ts"] for r in gpus_run], 99), 2)
                    if gpus_run
                    else None
                ),
            },
            "snapshots_taken": len(taken),
            "longest_gap_between_snapshots_s": round(longest[0], 2) if longest else None,
            "longest_gap_ended_after_storm_end_s": (
                round(longest[1] - storm_end, 1) if longest else None
            ),
        },
        "attribution": {
            "all_held_after_storm_end_s": None
            if all_held is None
            else round(all_held - storm_end, 1),
            "all_held_after_last_added_s": (
                None if all_held is None or last_added is None else round(all_held - last_added, 1)
            ),
            "all_held_after_storm_start_s": None if all_held is None else round(all_held - t0, 1),
            "per_kernel_wait_s": {
                "p50": round(percentile(waits, 50), 1) if waits else None,
                "max": round(max(waits), 1) if waits else None,
                "held": len(waits),
            },
        },
        "driver": {
            **nvml_windows,
            "budget": raw["sampler_at_end"]["nvml_budget"],
            "sampler_backend_time_fraction_at_end": raw["sampler_at_end"]["backend_time_fraction"],
        },
        "latency": {
            "gpus_storm": _ms([r["lat"] for r in of("gpus", t0, storm_end) if r["st"] == 200]),
            "api_status_storm": _ms(
                [r["lat"] for r in of("api_status", t0, storm_end) if r["st"] == 200]
            ),
            "gpus_after": _ms(
                [r["lat"] for r in of("gpus", marks["settled"], end) if r["st"] == 200]
            ),
            "api_status_after": _ms(
                [r["lat"] for r in of("api_status", marks["settled"], end) if r["st"] == 200]
            ),
            "kernels_storm": _ms(
                [r["lat"] for r in of("kernels", t0, storm_end) if r["st"] == 200]
            ),
            "errors_storm": sum(
                1 for k in ("gpus", "api_status") for r in of(k, t0, storm_end) if r["st"] != 200
            ),
        },
        "stream": {
            "clients": p["clients"],
            "message_bytes_median": percentile(sizes, 50),
            "message_bytes_max": max(sizes) if sizes else None,
            "messages_observed": len(ws_storm),
            "other_clients": raw.get("stream_clients"),
        },
        "server": {
            "rss_mib_before_storm_end_end": [
                raw.get("rss_before_mib"),
                raw.get("rss_storm_end_mib"),
                raw.get("rss_end_mib"),
            ],
            "available_memory_gib_before_min": [
                raw.get("available_memory_before_gib"),
                raw.get("available_memory_min_gib"),
            ],
        },  # fmt: skip
    }

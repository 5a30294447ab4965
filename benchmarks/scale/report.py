"""The headline figures of bench_scale.py as a markdown table, next to their targets."""

from __future__ import annotations

from typing import Any

TARGETS = {"recovery_s": 10.0, "max_age_s": 5.0, "driver_share": 0.02}


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def markdown(result: dict[str, Any]) -> str:
    """The headline figures as a markdown table: measurement, result, target, met."""
    f = result["figures"]
    fc, pc, st, at = f["fast_cadence"], f["processes_cadence"], f["staleness"], f["attribution"]
    dr, lat, sv = f["driver"], f["latency"], f["stream"]
    budget_ms = 1000 * dr["budget"]
    storm, after, whole = dr["storm"], dr["after"], dr["storm_to_end"]
    rec = fc["recovery_s"]
    rec_text = f"{rec} s" if rec is not None else f"not back within {fc['waited_s']} s"
    held_text = (
        f"{at['all_held_after_storm_end_s']} / {at['all_held_after_last_added_s']} s"
        if at["all_held_after_storm_end_s"] is not None
        else f"not within {fc['waited_s'] + dr['after'].get('seconds', 0):g} s "
        f"({at['per_kernel_wait_s']['held']} of {f['kernels']['ready']} did)"
    )
    share = {k: dr[k].get("driver_ms_per_s") for k in ("storm", "after", "storm_to_end")}
    rows = [
        ("kernels started together / ready; storm (first POST to last kernel ready)",
         f"{f['kernels']['started']} / {f['kernels']['ready']}; {f['kernels']['storm_s']} s", "", ""),
        ("fast interval back at the configured "
         f"{fc['configured_s']} s, after the storm's end", rec_text,
         f"<= {TARGETS['recovery_s']:g} s", _met(rec is not None and rec <= TARGETS["recovery_s"])),
        ("fast interval: at the storm's end / largest seen (baseline)",
         f"{fc['interval_at_storm_end_s']} / {fc['max_interval_s']} s ({fc['baseline_interval_s']} s)", "", ""),
        ("fast group measured cost: largest seen (baseline)",
         f"{fc['max_cost_ms']} ms ({fc['baseline_cost_ms']} ms)", "", ""),
        ("stream messages: the last gap longer than 1.5x the configured interval ended, after the "
         "storm's end", f"{fc['last_long_gap_after_storm_end_s']} s", "", ""),
        ("process-list interval: baseline / largest seen / at the end",
         f"{pc['baseline_interval_s']} / {pc['max_interval_s']} / {pc['interval_at_end_s']} s", "", ""),
        (f"`GET gpus` snapshot age, storm + 30 s ({st['polls']} polls, 200 ms apart): max / p99",
         f"{st['max_s']} / {st['p99_s']} s", f"max <= {TARGETS['max_age_s']:g} s",
         _met(st["max_s"] is not None and st["max_s"] <= TARGETS["max_age_s"])),
        (f"same, storm start to the end of the run ({st['whole_run']['polls']} polls): max "
         "(when, after the storm's end) / p99",
         f"{st['whole_run']['max_s']} s ({st['whole_run']['max_at_after_storm_end_s']} s) / "
         f"{st['whole_run']['p99_s']} s", f"max <= {TARGETS['max_age_s']:g} s",
         _met(st["whole_run"]["max_s"] is not None
              and st["whole_run"]["max_s"] <= TARGETS["max_age_s"])),
        ("longest time without a new snapshot, storm start to end (it ended how long after the "
         "storm's end)",
         f"{st['longest_gap_between_snapshots_s']} s ({st['longest_gap_ended_after_storm_end_s']} s)",
         "", ""),
        ("all kernels show GPU memory in `GET kernels`: after the storm's end / after the last was listed",
         held_text, "", ""),
        ("first process-list round after the storm's start",
         f"{pc['first_round_after_storm_start_s']} s" if pc["first_round_after_storm_start_s"]
         is not None else "none", "", ""),
        ("driver time: storm / after recovery / storm start to end",
         " / ".join(f"{v} ms/s ({v / 10:.2f}%)" if v is not None else "-" for v in share.values()),
         f"<= {budget_ms:g} ms/s ({100 * dr['budget']:g}%)",
         _met(whole.get("driver_ms_per_s") is not None and whole["driver_ms_per_s"] <= budget_ms
              and after.get("driver_ms_per_s", 0) <= budget_ms)),
        ("server process CPU: baseline / storm / after recovery (% of one core)",
         f"{dr['baseline'].get('server_cpu_pct')} / {storm.get('server_cpu_pct')} / "
         f"{after.get('server_cpu_pct')}%", "", ""),
        ("whole host busy: baseline / storm / after recovery (% of all cores); of it, "
         "processes outside this run",
         f"{dr['baseline'].get('host_busy_pct')} / {storm.get('host_busy_pct')} / "
         f"{after.get('host_busy_pct')}%; {dr['baseline'].get('others_pct')} / "
         f"{storm.get('others_pct')} / {after.get('others_pct')}%", "", ""),
        (f"stream message with {sv['clients']} clients: median / max",
         f"{sv['message_bytes_median']} / {sv['message_bytes_max']} bytes", "", ""),
        ("`GET tfgpu/api/gpus` during the storm: p50 / p99",
         f"{lat['gpus_storm']['p50_ms']} / {lat['gpus_storm']['p99_ms']} ms", "p99 < 20 ms",
         _met(lat["gpus_storm"]["p99_ms"] is not None and lat["gpus_storm"]["p99_ms"] < 20)),
        ("jupyter_server `GET /api/status` during the storm: p50 / p99",
         f"{lat['api_status_storm']['p50_ms']} / {lat['api_status_storm']['p99_ms']} ms",
         "p99 < 50 ms",
         _met(lat["api_status_storm"]["p99_ms"] is not None and lat["api_status_storm"]["p99_ms"] < 50)),
        ("after recovery: `GET gpus` / `/api/status` p99",
         f"{lat['gpus_after']['p99_ms']} / {lat['api_status_after']['p99_ms']} ms", "", ""),
    ]  # fmt: skip
    lines = ["| measurement | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)

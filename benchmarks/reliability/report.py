"""The headline figures of bench_reliability.py's sections as a markdown table."""

from __future__ import annotations

import json
from typing import Any


def markdown(result: dict[str, Any]) -> str:
    """The headline figures as a markdown table."""
    rows = [("section", "figure", "value")]
    s = result["sections"]
    if "hostile_kernel_flood" in s and "error" not in s["hostile_kernel_flood"]:
        f = s["hostile_kernel_flood"]
        c, srv = f["client_during_flood"], f["server"]
        after_key = next(k for k in srv if k.endswith("s_after"))
        rows += [
            ("1 flood", "hostile kernel answers by status", json.dumps(f["hostile_kernel"]["by_status"])),
            ("1 flood", "client served / errors", f"{c['served']} / {c['errors']}"),
            ("1 flood", "client p50 / p99 / max ms", f"{c['p50_ms']} / {c['p99_ms']} / {c['max_ms']}"),
            ("1 flood", "server RSS MiB before / peak / end / " + after_key,
             f"{srv['before_flood']['rss_mib']} / {srv['peak_rss_mib_during_flood']} / "
             f"{srv['end_of_flood']['rss_mib']} / {srv[after_key]['rss_mib']}"),
        ]  # fmt: skip
    if "nvml_faults" in s and "error" not in s["nvml_faults"]:
        f = s["nvml_faults"]
        c = f["client_during_faults"]
        rows += [
            ("2 NVML faults", "faults raised", f["faults_raised"]),
            ("2 NVML faults", "client served / non-200", f"{c['served']} / {c['errors']}"),
            ("2 NVML faults", "client p99 ms", c["p99_ms"]),
            ("2 NVML faults", "GPU rows with errors / rows / lost",
             f"{f['gpu_rows_during_faults'].get('with_errors')} / {f['gpu_rows_during_faults'].get('rows')}"
             f" / {f['gpu_rows_during_faults'].get('lost')}"),
            ("2 NVML faults", "all fields back after clear (s)", f"{f['fields_back_after_clear']} ({f['seconds_to_recover']})"),
            ("2 NVML faults", "fields back on GPUs not lost (s)", f["fields_back_on_gpus_not_lost_s"]),
            ("2 NVML faults", f"GPUs still lost {f['recover_window_s']:g} s after clear", f["lost_gpus_after_clear"]),
        ]  # fmt: skip
    if "held_store_lock" in s and "error" not in s["held_store_lock"]:
        f = s["held_store_lock"]
        c = f["reads_while_held"]
        rows += [
            ("3 store lock", "reads served / errors while held", f"{c['served']} / {c['errors']}"),
            ("3 store lock", "reads p99 / max ms", f"{c['p99_ms']} / {c['max_ms']}"),
            ("3 store lock", "PUT while held: status (s)",
             ", ".join(f"{x['status']} ({x['seconds']})" for x in f["puts_while_held"])),
            ("3 store lock", "PUT after release", f["put_after_release"]["status"]),
        ]  # fmt: skip
    if "kernel_churn" in s and "error" not in s["kernel_churn"]:
        f = s["kernel_churn"]
        b, a = f["server"]["before"], f["server"]["after"]
        rows += [
            ("4 churn", f"{f['kernels']} kernels: RSS MiB before / after", f"{b['rss_mib']} / {a['rss_mib']}"),
            ("4 churn", "server threads before / after", f"{b['threads']} / {a['threads']}"),
            ("4 churn", "leftover kernel processes", f["leftover_kernel_processes"]),
            ("4 churn", "per-kernel state left", json.dumps({k: v for k, v in f["state_after"].items() if v})),
        ]  # fmt: skip
    if "policy_flood" in s and "error" not in s["policy_flood"]:
        f = s["policy_flood"]
        for r in f["rounds"]:
            views = ", ".join(
                f"{v['messages']} msgs / {v['kib']} KiB / {v['policy_pushes']} pushes"
                for v in r["per_view"]
            )
            c = r["client"]
            rows += [
                (f"5 policy flood, {r['views']} view(s)", "requests / accepted / 429",
                 f"{r['requests']} / {r['accepted']} / {r['refused_429']}"),
                (f"5 policy flood, {r['views']} view(s)", "store writes / policy revisions",
                 f"{r['store_writes']} / {r['policy_revisions']}"),
                (f"5 policy flood, {r['views']} view(s)", f"per view in {r['views_window_s']} s", views),
                (f"5 policy flood, {r['views']} view(s)", "client served / errors, p50 / p99 ms",
                 f"{c['served']} / {c['errors']}, {c['p50_ms']} / {c['p99_ms']}"),
            ]  # fmt: skip
    if "stalled_clients" in s and "error" not in s["stalled_clients"]:
        for r in s["stalled_clients"]["rounds"]:
            name = f"6 stalled, {r['gpus']} GPUs"
            rows += [
                (name, "RSS MiB every 5 s", " ".join(str(t["rss_mib"]) for t in r["every_5s"])),
                (name, "RSS MiB before / after close", f"{r['before']['rss_mib']} / "
                 + " / ".join(str(a["rss_mib"]) for a in r["after_close"])),
                (name, "held for clients KiB (max)", max(t.get("pending_kib", 0) for t in r["every_5s"])),
                (name, "reading client msgs/s (fast interval s)",
                 f"{r['reading_client']['per_s']} ({r['fast_interval_s']})"),
            ]  # fmt: skip
    if "gpu_lost_at_open" in s and "error" not in s["gpu_lost_at_open"]:
        for kind, r in s["gpu_lost_at_open"]["rounds"].items():
            rows += [
                (f"7 lost at open ({kind})", "serving / listed 7 + lost s from start",
                 f"{r['serving_s']} / {r['listed_s']}"),
                (f"7 lost at open ({kind})", "lost reason", (r["lost_row"] or {}).get("lost_reason")),
                (f"7 lost at open ({kind})", "served after clear s", r["served_after_clear_s"]),
            ]  # fmt: skip
    for name, data in s.items():
        if "error" in data:
            rows.append((name, "error", data["error"].splitlines()[-1]))
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines)

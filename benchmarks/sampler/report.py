"""The headline figures of bench_sampler.py as a markdown table, next to their targets."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "a": "calls/s flat within 10% for 1/10/50 clients",
    "b": "NVML time <= nvml_budget (2% of wall time)",
    "c": "/api/status p99 < 50 ms with 50 streaming clients",
    "d": "GET gpus p99 < 20 ms with 64 concurrent clients",
    "e": "server CPU < 2% of one core excluding NVML calls",
}


def markdown(result: dict[str, Any]) -> str:
    """A small table of the headline numbers next to their targets."""
    lines = ["| # | measurement | result | target | met |", "|---|---|---|---|---|"]

    def row(key: str, what: str, value: str, met: bool | None = None) -> None:
        target = TARGETS[key] if met is not None else "(context)"
        verdict = "" if met is None else ("yes" if met else "NO")
        lines.append(f"| {key} | {what} | {value} | {target} | {verdict} |")

    s = result["sections"]
    if "a" in s:
        a = s["a"]
        rates = ", ".join(f"{n}: {r['calls_per_s']:.1f} ({r['wall_s']:.0f} s)" for n, r in a["by_clients"].items())
        row("a", f"NVML calls/s by clients ({rates})", f"spread {a['spread']:.1%}", a["flat_within_10pct"])
    if "b" in s:
        b = s["b"]
        off, on, first = b["without_pcie"], b["with_pcie"], b["with_pcie_first_seconds"]
        row("b", "NVML time / wall time, no PCIe", f"{off['nvml_fraction']:.2%}", off["nvml_fraction"] <= b["nvml_budget"])
        row(
            "b",
            f"NVML time / wall time, PCIe watched ({on['wall_s']:.0f} s)",
            f"{on['nvml_fraction']:.2%} (first {first['seconds']:.0f} s: {first['nvml_fraction']:.1%})",
            on["nvml_fraction"] <= b["nvml_budget"],
        )
    if "c" in s:
        c = s["c"]
        row("c", "GET /api/status p50 / p99, 50 streaming", f"{c['p50_ms']} / {c['p99_ms']} ms", c["p99_ms"] < 50)
    if "d" in s:
        d, k, p = (s["d"][n] for n in ("closed_loop_64", "closed_loop_64_keepalive", "paced_64_at_1hz"))
        row(
            "d",
            f"GET gpus p50 / p99, 64 concurrent back to back, AsyncHTTPClient ({d['throughput_rps']} req/s)",
            f"{d['p50_ms']} / {d['p99_ms']} ms",
            d["p99_ms"] < 20,
        )
        row(
            "d",
            f"GET gpus p50 / p99, 64 concurrent back to back, keep-alive ({k['throughput_rps']} req/s)",
            f"{k['p50_ms']} / {k['p99_ms']} ms",
        )
        row("d", "GET gpus p50 / p99, 64 clients at 1 Hz each", f"{p['p50_ms']} / {p['p99_ms']} ms")
    if "e" in s:
        for name, what, judged in (("clients_50", "50 clients", True), ("no_clients", "no clients", False)):
            e = s["e"][name]
            row(
                "e",
                f"server CPU, {what}, no latency (total / excl. NVML)",
                f"{e['cpu_pct_of_one_core']:.2f}% / {e['cpu_excluding_nvml_pct']:.2f}%",
                e["cpu_excluding_nvml_pct"] < 2 if judged else None,
            )
    return "\n".join(lines)

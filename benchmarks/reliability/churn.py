"""Section 4: kernels started and stopped in batches through the REST API; what stays behind."""

from __future__ import annotations

import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _harness import FakeServer, call, start_session

from .plumbing import ready, server_figures

# What a kernel leaves in the server when a framework runs in it (as tests/reliability/
# test_kernel_churn.py): a record in its report folder and a report over its own channel.
LEAVE_TRACES = """
import tfgpu_apply, tfgpu_report
tfgpu_apply.error(None, "churn benchmark: a record for the server to clean up", announce=False)
print(tfgpu_report.send_once("torch", [{"uuid": "GPU-churn", "reserved": 2**20}]))
"""


def kernel_state(server: FakeServer) -> dict[str, int | str]:
    """Kernel ids the extension keeps something for, counted per place (bench endpoint)."""
    status, state, _ = call(server, "GET", "bench/kernel-state")
    if status != 200:
        return {"unavailable": str(status)}
    return {place: len(ids) if isinstance(ids, list) else ids for place, ids in state.items()}


def section_churn(p: dict[str, Any]) -> dict[str, Any]:
    """Kernels started and stopped in batches through the REST API; what stays behind."""
    with FakeServer() as server:
        idle = server_figures(server)
        warm = start_session(server, "warm-up.ipynb")  # one-time imports before "before"
        ready(server, warm["kernel"]["id"])
        call(server, "DELETE", f"api/sessions/{warm['id']}")
        time.sleep(2)
        before = server_figures(server)
        batches = []
        pool = ThreadPoolExecutor(max_workers=p["batch"])
        try:
            for b in range(p["kernels"] // p["batch"]):
                names = [f"churn-{b}-{n}.ipynb" for n in range(p["batch"])]
                started = time.monotonic()
                sessions = list(pool.map(start_session, [server] * len(names), names))
                start_s = time.monotonic() - started
                codes = [LEAVE_TRACES] + ["print('ready')"] * (len(sessions) - 1)
                ids = [s["kernel"]["id"] for s in sessions]
                ready_n = sum(pool.map(ready, [server] * len(ids), ids, codes))
                running = server_figures(server)
                state_running = kernel_state(server)
                started = time.monotonic()
                codes = list(pool.map(
                    lambda s: call(server, "DELETE", f"api/sessions/{s['id']}")[0], sessions
                ))  # fmt: skip
                batches.append({
                    "start_s": round(start_s, 2), "ready": ready_n,
                    "stop_s": round(time.monotonic() - started, 2),
                    "delete_statuses": dict(collections.Counter(map(str, codes))),
                    "server_while_running": running, "state_while_running": state_running,
                })  # fmt: skip
        finally:
            pool.shutdown(wait=True)
        # Then wait (bounded) for the kernels to exit and the periodic prune to forget them.
        settled_at = time.monotonic()
        while time.monotonic() - settled_at < 60:
            state = kernel_state(server)
            figures = server_figures(server)
            if figures["children"] == 0 and not any(
                v for v in state.values() if isinstance(v, int)
            ):
                break
            time.sleep(0.5)
        settle_s = time.monotonic() - settled_at
        _, kernels_left, _ = call(server, "GET", "api/kernels")
        after = server_figures(server)
    return {
        "kernels": p["kernels"],
        "batch": p["batch"],
        "server": {"idle": idle, "before": before, "after": after},
        "rss_growth_mib": round(after["rss_mib"] - before["rss_mib"], 1),
        "leftover_kernel_processes": after["children"],
        "kernels_listed_after": len(kernels_left) if isinstance(kernels_left, list) else None,
        "state_after": state,
        "settle_s": round(settle_s, 1),
        "rss_mib_by_batch": [b["server_while_running"]["rss_mib"] for b in batches],
        "batches": batches,
    }

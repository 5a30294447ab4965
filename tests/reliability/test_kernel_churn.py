"""Kernel churn: fifty kernels started and stopped leave nothing behind in the server.

A server that runs for weeks sees thousands of kernels come and go; anything it keeps per
kernel and does not drop when the kernel goes is a leak. Real server, real kernels (in batches
of ten at once, as a class opening its notebooks), simulated GPUs with placement and
enforcement on, so every per-kernel structure is in use while the kernels run.
"""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest

from tests.kernel_helpers import run_code, start_session

KERNELS = 50
BATCH = 10
# What a kernel leaves in the server when a framework runs in it: its record in the record
# folder, and a report over its own channel (figures for simulated GPU 0).
LEAVE_TRACES = """
import tfgpu_apply, tfgpu_report
tfgpu_apply.error(None, "churn test: a record for the server to clean up", announce=False)
print(tfgpu_report.send_once("torch", [{"uuid": "0", "reserved": 2**20}]))
"""


@pytest.fixture
def tfgpu_config():
    """Two simulated GPUs, kernels placed with `auto`, every kernel over a 1 MiB cap (warned)."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "process_interval": 0.5,
        "simulated_gpus": [{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 2}],
        "default_policy": {"devices": "auto", "gpu_count": 1},
        "max_memory_mb": 1,
        "enforcement": "warn",
        "enforcement_grace": 0.0,
    }


def kernel_state(app) -> dict[str, set[str]]:
    """Kernel ids the server keeps something for, per place it keeps it."""
    record_root = app.kernels.record_root
    state = {
        "launches": app.kernels.launches.kernel_ids(),
        "tokens": app.tokens.kernel_ids(),
        "reports": app.reports.kernel_ids(),
        "placement reservations": set(app.policies.placement.reserved()),
        "record folders": set(os.listdir(record_root)) if os.path.isdir(record_root) else set(),
        "attribution kernels": {k.kernel_id for k in app.attribution.kernels},
        "GPUs whose figure was a kernel's report": app.kernels.memory.kernel_ids(),
    }
    # No public accessor for these: the registry's and the enforcer's own per-kernel memory.
    for owner, names in (
        (app.kernels, ("_pids", "_notebooks", "_failing")),
        (app.enforcer, ("_since", "_announced", "_history", "_cooldown", "_failing", "_waiting")),
    ):
        for name in names:
            kept = getattr(owner, name, None) or ()
            state[f"{type(owner).__name__}.{name}"] = {
                key[0] if isinstance(key, tuple) else key for key in kept
            }
    return state


def running(processes: dict[int, float]) -> set[int]:
    """The kernel processes (PID, start time) that still run."""
    alive = set()
    for pid, started in processes.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return alive


async def test_fifty_kernels_started_and_stopped_leave_nothing_behind(jp_fetch, jp_serverapp):
    """After 50 kernels came and went, the server keeps nothing for any of them."""
    app = jp_serverapp.web_app.settings["tfgpu_services"]
    # jupyter_server starts its extensions once its event loop runs (pytest-jupyter does not):
    # start this one as a running server has it, with its periodic refresh-and-prune pass.
    await jp_serverapp.web_app.settings["jupyter_tfgpu"].start_extension()
    processes: dict[int, float] = {}
    seen_while_running: list[dict[str, set[str]]] = []
    # Given batches of ten notebooks opened at once, one per batch leaving traces, then closed
    for batch in range(KERNELS // BATCH):
        sessions = await asyncio.gather(
            *(start_session(jp_fetch, f"churn-{batch}-{n}.ipynb") for n in range(BATCH))
        )
        ids = {s["kernel"]["id"] for s in sessions}
        for kernel_id in ids:
            pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
            processes[pid] = psutil.Process(pid).create_time()
        out = await run_code(jp_serverapp, sessions[0]["kernel"]["id"], LEAVE_TRACES)
        assert out.strip() == "204"
        seen_while_running.append(kernel_state(app))
        # When the notebooks are closed (their sessions deleted, as JupyterLab does)
        await asyncio.gather(
            *(jp_fetch("api", "sessions", s["id"], method="DELETE") for s in sessions)
        )

    # Then, once the server has caught up, no kernel process runs and nothing is kept
    deadline = time.monotonic() + 60
    while (running(processes) or any(kernel_state(app).values())) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert len(processes) == KERNELS
    assert running(processes) == set()
    assert {place: ids for place, ids in kernel_state(app).items() if ids} == {}
    # And the check looked at state that was really there while the kernels ran
    assert all(state["launches"] and state["tokens"] for state in seen_while_running)
    assert all(state["reports"] and state["record folders"] for state in seen_while_running)

"""The checks that run once a hard-caps server stopped: it left nothing behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_check_runner.probe import mps_processes
from gpu_check_runner.report import Check

if TYPE_CHECKING:
    from gpu_check_runner.run import GpuCheck


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def check_mps_daemon_gone(run: GpuCheck, c: Check) -> None:
    """(15) After the MPS server stopped, the MPS control daemon and servers it ran are gone,
    and so are their pipe and log folders."""
    facts = (run.hard_caps_end.get("mechanism") or {}).get("facts") or {}
    pids = {facts.get("pid"), *(int(p) for p in str(facts.get("servers") or "").split(",") if p)}
    observations = run.observations[run.phase_observations :]
    shown = {
        row["pid"] for obs in observations for row in obs["rows"] if row.get("mps") == "server"
    }
    pids = {p for p in pids | shown if p}
    folders = [f for f in (facts.get("pipe_directory"), facts.get("log_directory")) if f]
    c.measured.update(stop=run.phase_stop, pids=sorted(pids), folders=folders)
    c.expect("the server shut down", run.phase_stop == "shut down", stop=run.phase_stop)
    alive = sorted(p for p in pids if _alive(p))
    c.expect("the daemon and the MPS servers it ran are gone", pids and not alive,
             **({"alive": alive} if alive else {}))  # fmt: skip
    left = [f for f in folders if Path(f).exists()]
    c.expect("its pipe and log folders are removed", folders and not left, left=left)
    before = {p["pid"] for p in run.report["hard_caps"]["probe"]["mps_processes"]}
    mine = [p for p in mps_processes() if p["uid"] == os.geteuid() and p["pid"] not in before]
    c.expect("no MPS process of this user is left that was not there before the run", not mine,
             **({"left": mine} if mine else {}))  # fmt: skip


def check_nvml_cgroups_gone(run: GpuCheck, c: Check) -> None:
    """(21) After the NVML server stopped, the cgroups it made for itself and its kernels are
    removed."""
    cgroup = ((run.hard_caps_end.get("host") or {}).get("cgroup")) or {}
    own = (cgroup.get("own") or "/").lstrip("/")
    parent = Path(cgroup.get("root") or "/sys/fs/cgroup", own, f"tfgpu-{run.phase_server_pid}")
    c.measured.update(stop=run.phase_stop, parent=str(parent))
    c.expect("the server shut down", run.phase_stop == "shut down", stop=run.phase_stop)
    c.expect("its parent cgroup and the kernels' leaves are removed", not parent.exists(),
             **({"left": sorted(p.name for p in parent.iterdir())} if parent.is_dir() else {}))  # fmt: skip

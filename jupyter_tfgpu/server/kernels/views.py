"""One kernel at one moment (``KernelRow``), and the views the API, the stream, the enforcer
and metrics make of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jupyter_tfgpu.gpu import MiB
from jupyter_tfgpu.policy import PolicyService
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement
from jupyter_tfgpu.policy.environment import framework_limit_mb
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.server.kernels.enforcement import KernelFacts
from jupyter_tfgpu.server.kernels.memory import KernelMemory


@dataclass(frozen=True)
class KernelRow:
    """The facts every view of a kernel is made from."""

    kernel_id: str
    name: str | None
    notebook: str | None
    execution_state: str | None
    last_activity: Any  # a datetime, as the kernel manager keeps it
    pid: int | None
    provisioner: str | None  # its class name
    launch: Launch | None  # what it started with; None when it started without a policy
    memory: KernelMemory

    @property
    def memory_limit_mb(self) -> int | None:
        """The cap it started with (MiB per GPU); None without one."""
        return self.launch.memory_limit_mb if self.launch is not None else None


def describe(
    row: KernelRow, policies: PolicyService, framework: dict[str, Any] | None
) -> dict[str, Any]:
    """One kernel as ``GET kernels/{id}`` shows it."""
    return {
        "id": row.kernel_id,
        "name": row.name,
        "notebook": row.notebook,
        "execution_state": row.execution_state,
        "last_activity": _iso(row.last_activity),
        "pid": row.pid,
        "provisioner": row.provisioner,
        "gpu_memory": row.memory.as_dict(),
        "policy": policies.effective(row.notebook),
        "applied": row.launch.to_json() if row.launch is not None else None,
        "restart_required": restart_required(row, policies),
        "framework": framework,
        "enforcement": enforcement(row, policies).summary_json(),
    }


def restart_required(row: KernelRow, policies: PolicyService) -> bool:
    """Whether the kernel runs with another policy than its notebook has now."""
    if row.launch is None:
        return False
    return row.launch.restart_required(policies.rendered(row.notebook), policies.own(row.notebook))


def enforcement(row: KernelRow, policies: PolicyService) -> CapEnforcement:
    """How the kernel's cap in force is enforced now: as its launch says, unless a driver limit
    set at its start is above the cap in force now (a caps file lowered it), or it started
    without a launch of this server (then no setting reaches it)."""
    launch = row.launch
    if launch is None or launch.enforcement is None:
        started_by = row.provisioner or "no provisioner"
        why = (
            f"started without a policy from this server (by {started_by}): no setting reaches it"
            if launch is None
            else "it started before this server said how caps are enforced"
        )
        return CapEnforcement.without_gpus("none", None, why)
    held = launch.enforcement
    cap, started = cap_mb(row, policies), launch.memory_limit_mb
    if held.level == "driver" and cap is not None and started is not None and cap < started:
        return CapEnforcement.without_gpus(
            "framework",
            held.mechanism,
            f"its cap was lowered to {cap} MiB while it ran; the driver holds the {started} MiB "
            "it started with, the enforcer the new cap",
        )
    return held


def cap_mb(row: KernelRow, policies: PolicyService) -> int | None:
    """A kernel's cap (MiB per GPU, as NVML shows its processes): the tighter of what it started
    with and what is in force now; None without one."""
    limits = [
        limit
        for limit in (row.memory_limit_mb, policies.effective(row.notebook).get("memory_limit_mb"))
        if limit
    ]
    return min(limits) if limits else None


def facts(row: KernelRow, policies: PolicyService, now: datetime) -> KernelFacts:
    """A kernel's GPU memory, cap and idleness, for the enforcer.

    NVML's figure for its processes is held to the cap. A figure that is only the kernel's own
    report (its frameworks' allocations, without the CUDA context) is held to the framework
    limit it started with: the cap less the context reserve its launch left. The GPU judged is
    the one furthest over (or nearest to) its limit.
    """
    memory = row.memory
    cap = cap_mb(row, policies)
    reserve = (row.launch.context_reserve_mb if row.launch is not None else None) or 0
    limits = {"nvml": cap, "kernel_report": framework_limit_mb(cap, reserve) if cap else None}
    known = [g for g in memory.per_gpu if g.used_memory is not None]
    if cap is None:
        judged = max(known, key=lambda g: g.used_memory or 0, default=None)
    else:
        judged = max(
            known, key=lambda g: (g.used_memory or 0) - (limits[g.source] or 0) * MiB, default=None
        )
    limit = limits[judged.source] if judged is not None else cap
    idle = None
    if row.execution_state == "idle" and isinstance(row.last_activity, datetime):
        idle = max(0.0, (now - row.last_activity).total_seconds())
    return KernelFacts(
        kernel_id=row.kernel_id,
        notebook=row.notebook,
        peak_gpu_bytes=judged.used_memory or 0 if judged is not None else 0,
        total_gpu_bytes=memory.total,
        limit_bytes=limit * MiB if limit else None,
        idle_seconds=idle,
        peak_source=judged.source if judged is not None else None,
        memory_source=memory.source,
        unknown=memory.unknown,
        cap_bytes=cap * MiB if cap else None,
        enforcement=enforcement(row, policies).level,
    )


def summary(row: KernelRow, policies: PolicyService) -> dict[str, Any]:
    """A short view of a kernel, for the websocket stream."""
    return {
        "id": row.kernel_id,
        "notebook": row.notebook,
        "execution_state": row.execution_state,
        "gpu_memory": row.memory.total,
        "gpu_memory_source": row.memory.source,
        "gpu_memory_unknown": row.memory.unknown,
        "memory_limit_mb": row.memory_limit_mb,
        "restart_required": restart_required(row, policies),
        "enforcement": enforcement(row, policies).level,
    }


def metrics_row(row: KernelRow, policies: PolicyService, now: datetime) -> dict[str, Any]:
    """A kernel's GPU memory per GPU, its cap and idleness, for metrics."""
    known = facts(row, policies, now)
    return {
        "kernel_id": row.kernel_id,
        "notebook": row.notebook,
        "idle_seconds": known.idle_seconds,
        "limit_bytes": known.cap_bytes,
        "enforcement": known.enforcement,
        **row.memory.as_dict(),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None

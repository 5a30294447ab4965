"""The servers a run starts, one after another, and the checks each runs, numbered in run order.

First a server without hard caps, as every site has by default (checks 1-9); then one per
``TFGPU.hard_caps`` mode, mps (10-15) and nvml (16-21), each with an admin cap and without the
enforcer, and a check that runs once it stopped. A mode the server cannot put in force on this
machine (``on_config_error = 'warn'`` lets it start with ``off``; GET status says why) makes
its checks ``skipped`` with the server's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from gpu_check_runner import hard_caps_checks as hard
from gpu_check_runner.after_stop import check_mps_daemon_gone, check_nvml_cgroups_gone
from gpu_check_runner.checks import CHECKS, CheckFunction
from gpu_check_runner.report import MiB, Check, mib
from gpu_check_runner.server import ENFORCED, Server

if TYPE_CHECKING:
    from gpu_check_runner.run import GpuCheck


@dataclass(frozen=True)
class Phase:
    """One server of the run: its hard-caps mode, its checks, and those run after it stopped."""

    name: str  # as --phases names it
    hard_caps: str  # TFGPU.hard_caps
    checks: tuple[CheckFunction, ...]
    after_stop: tuple[CheckFunction, ...] = ()

    def settings(self, admin_mb: int) -> tuple[str, ...]:
        """Its server's command-line settings beyond those every server has."""
        if self.hard_caps == "off":
            return ENFORCED
        return (
            f"--TFGPU.hard_caps={self.hard_caps}",
            f"--TFGPU.max_memory_mb={admin_mb}",
            "--TFGPU.on_config_error=warn",
        )


def check_kernel_start_cost(run: GpuCheck, c: Check) -> None:
    """(9) Without hard caps, three capped kernels started one at a time: the start (POST
    api/sessions to the kernel's first answer) and its first CUDA work, timed (the baseline of
    checks 14 and 20)."""
    hard.kernel_start_cost(run, c, "off")


def check_mps_framework_limit_off(run: GpuCheck, c: Check) -> None:
    """(10) Under MPS, a PyTorch kernel capped at 4096 MiB that switches its framework limit off
    is refused by the driver at its cap."""
    hard.framework_limit_off(run, c, "mps")


def check_mps_deleted_variables(run: GpuCheck, c: Check) -> None:
    """(11) Under MPS, a kernel that deletes its variables before CUDA starts still cannot pass
    the admin's cap; what each change of its MPS variables lets a child process through is
    measured."""
    hard.deleted_variables(run, c, "mps")


def check_mps_greedy_neighbour(run: GpuCheck, c: Check) -> None:
    """(12) Under MPS, of two kernels on GPU 0 the greedy one fails at its cap while the other
    keeps its memory and runs."""
    hard.greedy_and_neighbour(run, c, "mps")


def check_mps_attribution(run: GpuCheck, c: Check) -> None:
    """(13) Under MPS, the kernels of checks 10 and 12 are attributed: each MPS client listed
    with its kernel and notebook, the MPS server named as such."""
    hard.attribution(run, c, "mps")


def check_mps_kernel_start_cost(run: GpuCheck, c: Check) -> None:
    """(14) The cost of MPS mode on kernel start: check 9's starts under MPS."""
    hard.kernel_start_cost(run, c, "mps")


def check_nvml_framework_limit_off(run: GpuCheck, c: Check) -> None:
    """(16) Under NVML limits, a PyTorch kernel capped at 4096 MiB that switches its framework
    limit off is refused by the driver at its cap."""
    hard.framework_limit_off(run, c, "nvml")


def check_nvml_deleted_variables(run: GpuCheck, c: Check) -> None:
    """(17) Under NVML limits, a kernel that deletes its variables before CUDA starts is still
    held at its own cap, and so is a process it starts."""
    hard.deleted_variables(run, c, "nvml")


def check_nvml_greedy_neighbour(run: GpuCheck, c: Check) -> None:
    """(18) Under NVML limits, of two kernels on GPU 0 the greedy one fails at its cap while
    the other keeps its memory and runs."""
    hard.greedy_and_neighbour(run, c, "nvml")


def check_nvml_attribution(run: GpuCheck, c: Check) -> None:
    """(19) Under NVML limits, the kernels of checks 16 and 18 are attributed."""
    hard.attribution(run, c, "nvml")


def check_nvml_kernel_start_cost(run: GpuCheck, c: Check) -> None:
    """(20) The cost of NVML limits on kernel start: check 9's starts under NVML limits."""
    hard.kernel_start_cost(run, c, "nvml")


PHASES: tuple[Phase, ...] = (
    Phase("cooperative", "off", (*CHECKS, check_kernel_start_cost)),
    Phase(
        "mps",
        "mps",
        (
            check_mps_framework_limit_off,
            check_mps_deleted_variables,
            check_mps_greedy_neighbour,
            check_mps_attribution,
            check_mps_kernel_start_cost,
        ),
        (check_mps_daemon_gone,),
    ),
    Phase(
        "nvml",
        "nvml",
        (
            check_nvml_framework_limit_off,
            check_nvml_deleted_variables,
            check_nvml_greedy_neighbour,
            check_nvml_attribution,
            check_nvml_kernel_start_cost,
        ),
        (check_nvml_cgroups_gone,),
    ),
)
PHASE_NAMES = tuple(phase.name for phase in PHASES)


def numbered(phase: Phase) -> Iterator[tuple[int, CheckFunction, bool]]:
    """(number, check, whether it runs after the server stopped) for each check of ``phase``;
    the numbers are those of the whole run, whichever phases run."""
    number = 0
    for row in PHASES:
        for after, group in ((False, row.checks), (True, row.after_stop)):
            for function in group:
                number += 1
                assert (function.__doc__ or "").startswith(f"({number})"), function.__name__
                if row is phase:
                    yield number, function, after


def admin_cap_mb(run: GpuCheck) -> int:
    """The hard-caps servers' max_memory_mb: ADMIN_SHARE of the GPU, as the last server or
    else nvidia-smi gave its size."""
    total_mib = run.gpu_total / MiB
    if not total_mib:
        rows = run.report["hard_caps"]["probe"]["gpu"].get("gpus") or [{}]
        size = rows[0].get("memory.total", "").split()
        total_mib = float(size[0]) if size and size[0].isdigit() else 0
    return int(total_mib * hard.ADMIN_SHARE) if total_mib else run.admin_mb


def run_phase(run: GpuCheck, phase: Phase) -> None:
    """Start the phase's server, run its checks, stop it, run those that follow its stop."""
    run.admin_mb = admin_cap_mb(run)
    run.server = Server(run.workdir / phase.name, run.args.backend,
                         phase.settings(run.admin_mb))  # fmt: skip
    run.servers.append(run.server)
    run.phase_stop, run.hard_caps, run.hard_caps_end = None, {}, {}
    try:
        run.server.start()
        run.phase_server_pid = run.server.proc.pid if run.server.proc else None
        status = run.server.wait_ready(run.within(90))
        status.pop("sampler", None)  # its first round only; sampler_after says more
        snapshot = run.wait_for_gpus()
        run.gpu_total = snapshot["gpus"][0]["memory"]["total"]
        run.gpu_uuids = [g.get("uuid") for g in snapshot["gpus"]]
        run.phase_observations = len(run.observations)
        run.hard_caps = status.get("hard_caps") or {}
        checks = list(numbered(phase))
        if phase.hard_caps == "off":
            record_baseline(run, status, snapshot)
        else:
            run.report["hard_caps"][phase.name] = {
                "admin_cap_mib": run.admin_mb, "status": run.hard_caps}  # fmt: skip
        in_force = run.hard_caps.get("in_force", "off")
        if in_force != phase.hard_caps:
            why = (f"TFGPU.hard_caps {phase.hard_caps} is not in force on this machine "
                   f"(the server runs {in_force}): {run.hard_caps.get('reason')}")  # fmt: skip
            for number, check, _ in checks:
                entry = Check(number, check)
                entry.skip(why)
                run.report["checks"].append(entry.finish(0))
            return
        for number, check, after in checks:
            if not after:
                run.run_check(number, check)
        end = run.server.api("GET", "tfgpu/api/status")
        if phase.hard_caps == "off":
            run.report["server"]["sampler_after"] = end.get("sampler")
        else:
            run.hard_caps_end = end.get("hard_caps") or {}
            run.report["hard_caps"][phase.name]["status_at_end"] = run.hard_caps_end
        run.phase_stop = run.server.stop()
        for number, check, after in checks:
            if after:
                run.run_check(number, check)
    finally:
        if run.phase_stop is None:
            run.phase_stop = run.server.stop()


def record_baseline(run: GpuCheck, status: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """The first server's status and config, and the GPUs before any kernel."""
    config = run.server.api("GET", "tfgpu/api/config")
    run.report["server"] = {"status": status, "provisioner": config.get("provisioner")}
    run.report["baseline"] = {
        "gpus": [
            {
                "index": g["index"],
                "name": g.get("name"),
                "uuid": g.get("uuid"),
                "used_mib": mib(g["memory"]["used"]),
                "total_mib": mib(g["memory"]["total"]),
                "processes": len(g.get("processes") or []),
            }
            for g in snapshot["gpus"]
        ],
    }

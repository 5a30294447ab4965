"""The steps the checks share, in and about one kernel: its framework there (or a skip), its
environment and framework limit as the policy renders them, JAX's allocation, the dry run's
host stand-in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpu_check_runner.kernels import Kernel, kernel_code
from gpu_check_runner.report import GiB, MiB, Check

if TYPE_CHECKING:
    from gpu_check_runner.run import GpuCheck

HOST_ALLOC = 128 * MiB  # dry run: host memory a kernel allocates for the simulated backend to see


def framework(check: Check, kernel: Kernel, name: str) -> bool:
    """Whether the kernel's Python has ``name``; a skip with the reason if not."""
    if kernel.probe.get("frameworks", {}).get(name):
        return True
    check.skip(f"{name} is not installed in the kernel's Python ({kernel.probe.get('executable')})")
    return False


def expect_env(check: Check, kernel: Kernel, wanted: dict[str, Any]) -> None:
    """The provisioner's variables as the kernel process sees them."""
    env = kernel.probe.get("env", {})
    seen = {name: env.get(name) for name in wanted}
    ok = seen == wanted
    check.expect(
        f"{kernel.notebook}: kernel environment as the policy renders it",
        ok,
        wanted=wanted,
        **({} if ok else {"seen": seen}),
    )


def framework_limit(check: Check, kernel: Kernel, cap_mb: int) -> int:
    """The framework limit the kernel started with (the cap less the CUDA context reserve, or
    the cap where that leaves no room), checked against its launch document and recorded."""
    applied = kernel.applied
    limit, reserve = applied.get("framework_limit_mb"), applied.get("context_reserve_mb")
    expected = None
    if isinstance(reserve, int):
        expected = cap_mb - reserve if cap_mb > reserve else cap_mb
    check.measured.setdefault("framework_limits", {})[kernel.notebook] = {
        "memory_limit_mb": applied.get("memory_limit_mb"),
        "framework_limit_mb": limit,
        "context_reserve_mb": reserve,
        "context_reserve_source": applied.get("context_reserve_source"),
        "measured_on": applied.get("context_reserve_measured_on"),
    }
    check.expect(
        f"{kernel.notebook}: started with the framework limit, the cap less the context reserve",
        limit is not None and limit == expected and applied.get("memory_limit_mb") == cap_mb,
        framework_limit_mb=limit,
        context_reserve_mb=reserve,
    )
    return limit if isinstance(limit, int) else cap_mb


def xla_fraction(run: GpuCheck, limit_mb: int) -> str:
    """XLA_PYTHON_CLIENT_MEM_FRACTION as the provisioner renders a framework limit."""
    return f"{round(min(1.0, limit_mb * MiB / run.gpu_total), 4)}"


def host_stand_in(run: GpuCheck, check: Check, kernels: list[Kernel], label: str) -> None:
    """Dry run: host memory the simulated backend reports, so attribution still runs."""
    if not run.simulated:
        return
    for kernel in kernels:
        check.measured.setdefault("host_alloc", {})[kernel.notebook] = kernel.run(
            kernel_code("host_alloc", nbytes=HOST_ALLOC), run.within(60)
        )
    run.observe(label, {k: HOST_ALLOC for k in kernels})


def run_jax(run: GpuCheck, check: Check, kernel: Kernel) -> dict[str, Any]:
    """Allocate 1 GiB with JAX in the kernel; expect it on the GPU."""
    out = kernel.run(kernel_code("jax_alloc", nbytes=GiB), run.within(180))
    check.expect(
        f"{kernel.notebook}: JAX runs on the GPU",
        out.get("backend") == "gpu",
        device=out.get("device"),
    )
    return out

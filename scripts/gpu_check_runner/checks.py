"""The eight checks, in the order they run; each docstring is the report's "what"."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from gpu_check_runner.kernel_steps import (
    HOST_ALLOC,
    expect_env,
    framework,
    framework_limit,
    host_stand_in,
    run_jax,
    xla_fraction,
)
from gpu_check_runner.kernels import KernelError, kernel_code
from gpu_check_runner.report import GiB, MiB, Check, mib
from gpu_check_runner.server import ENFORCEMENT, ENFORCEMENT_GRACE_S

if TYPE_CHECKING:
    from gpu_check_runner.run import GpuCheck

# Kept for scripts/gpu_check.py's --margin-mib, which is now only recorded: a capped kernel's
# frameworks get the cap less the CUDA context (framework_limit_mb), so NVML's figure for its
# process is expected within the cap itself.
DEFAULT_MARGIN_MIB = 1536
JAX_DEFAULT_RANGE = (0.70, 0.85)  # JAX preallocates 75% of the GPU unless told otherwise
GROWTH_MAX_FRACTION = 0.25  # "far less than 75%"
CAP_SHARE = 0.18  # check 2: four kernels, each capped at 18% of the GPU
TORCH_LIMIT_MB = 2048
# Check (8) holds its kernel this long past the grace period: three process-list reads (1 s
# apart) and some, so that the enforcer has judged it on fresh figures after the grace.
HOLD_PAST_GRACE_S = 5.0

CheckFunction = Callable[["GpuCheck", Check], None]


def check_jax_default_preallocation(run: GpuCheck, c: Check) -> None:
    """(1) A JAX kernel with no policy: NVML shows ~75% of the GPU held (preallocation)."""
    k = run.start_kernel(c, "default.ipynb", None)
    expect_env(
        c,
        k,
        {
            "XLA_PYTHON_CLIENT_PREALLOCATE": None,
            "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
            "CUDA_VISIBLE_DEVICES": None,
        },
    )
    if not framework(c, k, "jax"):
        return host_stand_in(run, c, [k], "1 default (host stand-in)")
    c.measured["jax"] = run_jax(run, c, k)
    obs = run.observe("1 default", {k: GiB})
    used = obs["kernels"][k.notebook]["nvml_used"]
    fraction = used / run.gpu_total
    low, high = JAX_DEFAULT_RANGE
    c.measured.update(
        nvml_used_mib=mib(used),
        gpu_total_mib=mib(run.gpu_total),
        fraction=round(fraction, 4),
    )
    c.expect(
        f"NVML shows {low:.0%}-{high:.0%} of the GPU held by the kernel",
        low <= fraction <= high,
        fraction=round(fraction, 4),
    )


def check_jax_four_capped_kernels(run: GpuCheck, c: Check) -> None:
    """(2) Four JAX kernels capped at 18% of the GPU each run at once within their caps."""
    limit = int(run.gpu_total / MiB * CAP_SHARE)
    c.measured.update(memory_limit_mb=limit, margin_mib=run.args.margin_mib)
    kernels = [run.start_kernel(c, f"{x}.ipynb", {"memory_limit_mb": limit}) for x in "abcd"]
    for k in kernels:
        expect_env(
            c,
            k,
            {
                "XLA_PYTHON_CLIENT_MEM_FRACTION": xla_fraction(run, framework_limit(c, k, limit)),
                "XLA_CLIENT_MEM_FRACTION": None,
                "XLA_PYTHON_CLIENT_PREALLOCATE": None,
            },
        )
    if not framework(c, kernels[0], "jax"):
        return host_stand_in(run, c, kernels, "2 four capped (host stand-in)")
    outcomes = {}
    for k in kernels:
        try:
            outcomes[k.notebook] = run_jax(run, c, k)
        except KernelError as err:
            outcomes[k.notebook] = {"error": str(err)[-700:]}
    c.measured["jax"] = outcomes
    c.expect(
        "each kernel allocated 1 GiB without an error (no OOM)",
        all("error" not in o for o in outcomes.values()),
    )
    obs = run.observe("2 four capped", {k: GiB for k in kernels})
    c.expect("NVML lists all four kernel processes at once", obs["settled"])
    overhead = {}
    for k in kernels:
        used = obs["kernels"][k.notebook]["nvml_used"]
        overhead[k.notebook] = mib(used - limit * MiB)
        c.expect(
            f"{k.notebook}: NVML used <= cap (the CUDA context fits under it)",
            GiB <= used <= limit * MiB,
            used_mib=mib(used),
            cap_mib=limit,
        )
    c.measured["overhead_over_cap_mib"] = overhead


def check_torch_memory_limit(run: GpuCheck, c: Check) -> None:
    """(3) A PyTorch kernel capped at 2048 MiB: 1 GiB works, 4 GiB is an OutOfMemoryError."""
    k = run.start_kernel(c, "torch.ipynb", {"memory_limit_mb": TORCH_LIMIT_MB})
    c.expect(
        "TFGPU_POLICY carries memory_limit_mb 2048",
        (k.probe.get("policy") or {}).get("memory_limit_mb") == TORCH_LIMIT_MB,
    )
    allowed = framework_limit(c, k, TORCH_LIMIT_MB)
    if not framework(c, k, "torch"):
        return host_stand_in(run, c, [k], "3 torch (host stand-in)")
    out = k.run(kernel_code("torch_limit"), run.within(180))
    record = out.pop("record", None) or {}
    c.measured.update(torch=out, bootstrap_record=record)
    c.expect("allocating 1 GiB works", out.get("alloc_1gib") == "ok")
    c.expect(
        "allocating 4 GiB raises torch.cuda.OutOfMemoryError",
        out.get("alloc_4gib") == "OutOfMemoryError",
        message=out.get("oom_message"),
    )
    wanted = allowed * MiB / out["total_memory"]
    applied = [a for a in record.get("applied", []) if a.get("setting") == "memory_limit_mb"]
    got = (applied[0].get("fractions") or {}).get("0") if applied else None
    c.expect(
        "tfgpu_bootstrap.record() shows the fraction applied",
        got is not None and abs(got - wanted) < 1e-3 and not record.get("pending"),
        fraction=got,
        expected=round(wanted, 4),
    )
    if out.get("fraction_reported") is not None:
        c.expect(
            "torch reports the same per-process fraction",
            abs(out["fraction_reported"] - wanted) < 1e-3,
            fraction=out["fraction_reported"],
        )
    obs = run.observe("3 torch", {k: GiB})
    used = obs["kernels"][k.notebook]["nvml_used"]
    c.expect(
        "NVML used <= 2048 MiB, the cap (the CUDA context fits under it)",
        used <= TORCH_LIMIT_MB * MiB,
        used_mib=mib(used),
    )


def check_cpu_only_devices_empty(run: GpuCheck, c: Check) -> None:
    """(4) devices []: torch and JAX see no GPU, and no GPU lists the kernel."""
    k = run.start_kernel(c, "cpu-only.ipynb", {"devices": []})
    expect_env(c, k, {"CUDA_VISIBLE_DEVICES": "-1"})
    out = k.run(kernel_code("cpu_only"), run.within(180))
    c.measured["frameworks"] = out
    if framework(c, k, "torch"):
        c.expect("torch.cuda.is_available() is False", out.get("torch_cuda_available") is False)
    if framework(c, k, "jax"):
        c.expect(
            "jax.devices() has no GPU",
            not any(d.startswith(("gpu", "cuda")) for d in out.get("jax_devices", [])),
            devices=out.get("jax_devices"),
        )
    if run.simulated:
        c.measured["host_alloc"] = k.run(
            kernel_code("host_alloc", nbytes=HOST_ALLOC), run.within(60)
        )
    obs = run.observe("4 cpu only", {k: None})
    c.expect(
        "no GPU lists the kernel's process",
        obs["kernels"][k.notebook]["nvml_used"] == 0 and obs["settled"],
    )


def check_jax_memory_growth(run: GpuCheck, c: Check) -> None:
    """(5) memory_growth: JAX does not preallocate; NVML shows far less than 75%."""
    k = run.start_kernel(c, "growth.ipynb", {"memory_growth": True})
    expect_env(
        c, k, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    )
    if not framework(c, k, "jax"):
        return host_stand_in(run, c, [k], "5 growth (host stand-in)")
    c.measured["jax"] = run_jax(run, c, k)
    obs = run.observe("5 growth", {k: GiB})
    used = obs["kernels"][k.notebook]["nvml_used"]
    fraction = used / run.gpu_total
    c.measured.update(nvml_used_mib=mib(used), fraction=round(fraction, 4))
    c.expect(
        f"NVML shows under {GROWTH_MAX_FRACTION:.0%} of the GPU (far less than 75%)",
        fraction < GROWTH_MAX_FRACTION,
        fraction=round(fraction, 4),
    )


def check_attribution(run: GpuCheck, c: Check) -> None:
    """(6) Every kernel process a GPU lists has the right kernel_id and notebook in GET gpus."""
    checked = 0
    for obs in run.observations:
        problems, seen = [], []
        for row in obs["rows"]:
            if not (row["ours"] or row["kernel_id"]):
                continue  # another user's process: shown as "other processes"
            seen.append(f"pid {row['pid']} -> {row['notebook']}")
            if not (
                row["ours"]
                and row["kernel_id"] == row["expected_kernel_id"]
                and row["notebook"] == row["expected_notebook"]
            ):
                problems.append(row)
        for notebook, kernel in obs["kernels"].items():
            if kernel["on_gpu"] and not kernel["nvml_used"]:
                problems.append(
                    {"notebook": notebook, "pid": kernel["pid"], "why": "not listed by any GPU"}
                )
        checked += len(seen)
        c.expect(
            f"{obs['label']}: kernel processes attributed",
            not problems,
            seen=seen,
            **({"problems": problems} if problems else {}),
        )
    foreign = sorted(
        {row["pid"] for obs in run.observations for row in obs["rows"] if not row["ours"]}
    )
    c.measured.update(rows_checked=checked, other_processes=foreign)
    c.expect("at least one kernel process was seen on a GPU", checked > 0)


def check_kernels_gpu_memory(run: GpuCheck, c: Check) -> None:
    """(7) GET kernels shows each kernel's GPU memory, as the GPU's process list does."""
    tolerance = 0.10 if run.simulated else 0.02  # RSS moves between two samples; NVML does not
    checked = 0
    for obs in run.observations:
        problems, seen = [], {}
        for notebook, kernel in obs["kernels"].items():
            checked += 1
            api, nvml = kernel["api_total"], kernel["nvml_used"]
            if kernel["on_gpu"]:
                ok = (
                    bool(api)
                    and abs(api - nvml) <= max(64 * MiB, tolerance * nvml)
                    and kernel["pid"] in kernel["api_pids"]
                )
            else:
                ok = api == 0
            seen[notebook] = {"api_mib": mib(api), "nvml_mib": mib(nvml)}
            if not ok or kernel["api_notebook"] != notebook:
                problems.append(
                    {
                        "notebook": notebook,
                        "api_notebook": kernel["api_notebook"],
                        "api_pids": kernel["api_pids"],
                        "pid": kernel["pid"],
                        "on_gpu": kernel["on_gpu"],
                    }
                )
        c.expect(
            f"{obs['label']}: gpu_memory per kernel",
            not problems,
            seen=seen,
            **({"problems": problems} if problems else {}),
        )
    c.expect("at least one kernel was checked", checked > 0)


def check_capped_jax_kernel_not_restarted(run: GpuCheck, c: Check) -> None:
    """(8) A JAX kernel capped at 18% of the GPU holds its whole framework limit (JAX preallocates
    it) past the enforcement grace period with enforcement=restart: it is not restarted."""
    limit = int(run.gpu_total / MiB * CAP_SHARE)
    c.measured.update(
        memory_limit_mb=limit, enforcement=ENFORCEMENT, enforcement_grace_s=ENFORCEMENT_GRACE_S
    )
    k = run.start_kernel(c, "held.ipynb", {"memory_limit_mb": limit})
    allowed = framework_limit(c, k, limit)
    expect_env(c, k, {"XLA_PYTHON_CLIENT_MEM_FRACTION": xla_fraction(run, allowed)})
    if framework(c, k, "jax"):
        c.measured["jax"] = run_jax(run, c, k)
        least = GiB
    elif run.simulated:  # the dry run holds host memory instead, which the simulated GPU shows
        c.measured["host_alloc"] = k.run(
            kernel_code("host_alloc", nbytes=HOST_ALLOC), run.within(60)
        )
        least = HOST_ALLOC
    else:
        return
    first = run.observe("8 held", {k: least})
    held_from = time.monotonic()
    # Past the grace period, and past three more process-list reads.
    until = held_from + run.within(ENFORCEMENT_GRACE_S + HOLD_PAST_GRACE_S)
    decisions: list[dict[str, Any]] = []
    pids = set()
    while True:
        recent = run.server.api("GET", "tfgpu/api/enforcement").get("recent") or []
        decisions = [d for d in recent if d.get("kernel_id") == k.id]
        pids.add(run.server.api("GET", f"tfgpu/api/kernels/{k.id}").get("pid"))
        if decisions or time.monotonic() >= until:
            break
        time.sleep(1.0)
    c.measured["held_s"] = round(time.monotonic() - held_from, 1)
    last = run.observe("8 held past the grace period", {k: least})
    used = [obs["kernels"][k.notebook]["nvml_used"] for obs in (first, last)]
    c.measured.update(nvml_used_mib=[mib(u) for u in used], cap_mib=limit)
    c.expect(
        "held past the grace period: no enforcement decision for the kernel",
        not decisions and c.measured["held_s"] >= ENFORCEMENT_GRACE_S,
        **({"decisions": decisions} if decisions else {}),
    )
    c.expect(
        "not restarted: the same kernel process throughout",
        pids == {k.pid},
        pids=sorted(pids, key=str),
    )
    if not run.simulated:
        c.expect(
            "NVML used <= cap throughout (the CUDA context fits under it)",
            all(least <= u <= limit * MiB for u in used),
            used_mib=[mib(u) for u in used],
        )
    c.expect("the kernel still runs code", k.run("print(6 * 7)", run.within(30)) == 42)


# In this order: (1) frees the GPU before (2) needs 72% of it.
CHECKS: tuple[CheckFunction, ...] = (
    check_jax_default_preallocation,
    check_jax_four_capped_kernels,
    check_torch_memory_limit,
    check_cpu_only_devices_empty,
    check_jax_memory_growth,
    check_attribution,
    check_kernels_gpu_memory,
    check_capped_jax_kernel_not_restarted,
)

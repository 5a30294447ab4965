"""The hard-caps checks: what the NVIDIA driver holds under ``TFGPU.hard_caps`` mps and nvml.

Each runs against a server of its own mode (``phases.py``), started with an admin cap
(``max_memory_mb``, ``ADMIN_SHARE`` of the GPU) and without the enforcer, so that what stops an
allocation is the driver and nothing else. The kernels are PyTorch kernels that switch their
framework limit off, so the framework holds nothing: a refusal at the cap is the driver's.
Where the kernel's Python has no PyTorch they check what the server gave the kernel and skip
the rest, saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpu_check_runner.kernel_steps import framework
from gpu_check_runner.kernels import Kernel, kernel_code
from gpu_check_runner.report import GiB, MiB, Check, mib

if TYPE_CHECKING:
    from gpu_check_runner.run import GpuCheck

CAP_MIB = 4096  # each kernel's own cap (memory_limit_mb)
ADMIN_SHARE = 0.25  # the hard-caps servers' max_memory_mb, as a share of the GPU
CHUNK_MIB = 128  # allocations go in chunks of this size
# A refusal may come this far below the cap: the CUDA context counts where the limit is the
# cgroup's (NVML), and the allocation that was refused was one chunk.
SLACK_MIB = 1024
MECHANISM = {"mps": "mps", "nvml": "nvml_memory_limit"}
PIPE_ENV, LIMIT_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
# What a notebook can take out of its own environment before CUDA starts.
DROPPED_ENV = (
    LIMIT_ENV,
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "TFGPU_POLICY",
)
UNSEEN_UUID = "GPU-00000000-0000-0000-0000-000000000000"


def expect_held(run: GpuCheck, c: Check, k: Kernel, mode: str, cap: int) -> None:
    """The kernel's launch names the mode's mechanism on every GPU, and the kernel got what
    the mechanism gives it: MPS its daemon's pipe folder and its cap per GPU by UUID; NVML a
    cgroup of its own under the server's."""
    enforcement = k.applied.get("enforcement") or {}
    per_gpu = enforcement.get("gpus") or []
    c.measured.setdefault("enforcement", {})[k.notebook] = enforcement
    c.expect(
        f"{k.notebook}: applied.enforcement names {MECHANISM[mode]} on each of its GPUs",
        bool(per_gpu) and all(g.get("mechanism") == MECHANISM[mode] for g in per_gpu),
        level=enforcement.get("level"),
        reason=enforcement.get("reason"),
    )
    env = k.probe.get("env", {})
    if mode == "mps":
        pipe = (run.hard_caps.get("mechanism") or {}).get("facts", {}).get("pipe_directory")
        wanted = sorted(f"{uuid}={cap}M" for uuid in run.gpu_uuids)
        seen = sorted((env.get(LIMIT_ENV) or "").split(","))
        c.expect(
            f"{k.notebook}: a client of the server's MPS daemon, its cap on each GPU by UUID",
            env.get(PIPE_ENV) == pipe and seen == wanted,
            pipe=env.get(PIPE_ENV),
            limit=env.get(LIMIT_ENV),
            **({} if seen == wanted else {"wanted": wanted}),
        )
    else:
        cgroup = k.probe.get("cgroup") or ""
        c.expect(
            f"{k.notebook}: in a cgroup of its own under the server's",
            f"/tfgpu-{run.server.proc.pid}/kernel-" in cgroup,
            cgroup=cgroup,
        )


def expect_refused(c: Check, out: dict[str, Any], cap: int, what: str) -> None:
    """Allocations stopped by an error at most ``cap`` MiB in, and within SLACK_MIB of it."""
    allocated = out.get("allocated_mib")
    c.expect(
        f"refused at {what} ({cap} MiB): an error at most {cap} MiB in, within {SLACK_MIB} MiB of it",
        out.get("refused") is not None
        and isinstance(allocated, int)
        and cap - SLACK_MIB - CHUNK_MIB < allocated <= cap,
        allocated_mib=allocated,
        refused=out.get("refused"),
    )


def alloc(k: Kernel, run: GpuCheck, ceiling: int, **options: Any) -> dict[str, Any]:
    """torch_alloc in the kernel, in chunks of CHUNK_MIB up to ``ceiling`` MiB."""
    code = kernel_code("torch_alloc", chunk_mib=CHUNK_MIB, ceiling_mib=ceiling, **options)
    return k.run(code, run.within(240))


def framework_limit_off(run: GpuCheck, c: Check, mode: str) -> None:
    """A capped PyTorch kernel switches its framework limit off, then allocates past its cap."""
    k = run.start_kernel(c, f"{mode}-limit-off.ipynb", {"memory_limit_mb": CAP_MIB})
    expect_held(run, c, k, mode, CAP_MIB)
    if not framework(c, k, "torch"):
        return
    out = alloc(k, run, 2 * CAP_MIB, framework_limit_off=True, keep_mib=GiB // MiB)
    c.measured["torch"] = out
    c.expect("its framework limit is off: torch's memory fraction is 1.0", out.get("fraction") == 1.0,
             fraction=out.get("fraction"))  # fmt: skip
    expect_refused(c, out, CAP_MIB, "its cap")
    obs = run.observe(f"{mode} limit off", {k: 0})
    c.measured["nvml_used_mib"] = mib(obs["kernels"][k.notebook]["nvml_used"])


def deleted_variables(run: GpuCheck, c: Check, mode: str) -> None:
    """A capped PyTorch kernel takes the variables it was given out of its environment before
    CUDA starts, switches its framework limit off, and allocates past the admin's cap."""
    admin = run.admin_mb
    k = run.start_kernel(c, f"{mode}-deleted.ipynb", {"memory_limit_mb": CAP_MIB})
    expect_held(run, c, k, mode, CAP_MIB)
    if not framework(c, k, "torch"):
        return
    out = alloc(k, run, admin + 2 * GiB // MiB, drop_env=DROPPED_ENV, framework_limit_off=True)
    c.measured.update(torch=out, admin_cap_mib=admin, own_cap_mib=CAP_MIB)
    dropped = out.get("dropped") or {}
    if mode == "mps":
        c.expect(f"{LIMIT_ENV} was set, and taken out before CUDA started", dropped.get(LIMIT_ENV))
        expect_refused(c, out, admin, "the admin's cap (max_memory_mb, the daemon's default)")
        # Whether it lifted its own cap by that is what the level's reason says; measured.
        c.measured["own_cap_lifted"] = (out.get("allocated_mib") or 0) > CAP_MIB
        given = {name: value for name, value in dropped.items() if value is not None}
        c.measured["environment_variants"] = mps_variants(run, k, admin, given)
    else:
        expect_refused(c, out, CAP_MIB, "its own cap, set on its cgroup")
        child = k.run(kernel_code("env_variants", variants={"child": {}}, chunk_mib=CHUNK_MIB,
                                  ceiling_mib=admin), run.within(180))  # fmt: skip
        c.measured["child"] = child
        held = (
            child["child"].get("refused") and (child["child"].get("allocated_mib") or 0) <= CAP_MIB
        )
        c.expect("a process the kernel starts is refused within the kernel's cap too", held,
                 child=child["child"])  # fmt: skip


def mps_variants(run: GpuCheck, k: Kernel, admin: int, given: dict[str, str]) -> dict[str, Any]:
    """Measured, not expected: what a child of the kernel gets with its MPS variables changed
    from those it was given (the findings the level's reason rests on)."""
    uuids = run.gpu_uuids
    own = f"{uuids[0]}={CAP_MIB}M"
    # A GPU the child cannot see: the second GPU hidden from it, or on one GPU a UUID of none.
    unseen = uuids[1] if len(uuids) > 1 else UNSEEN_UUID
    variants = {
        "as_given": {},
        "limit_removed": {LIMIT_ENV: None},
        "limit_raised": {LIMIT_ENV: f"{uuids[0]}={admin + 2 * GiB // MiB}M"},
        "unseen_gpu_named": {
            LIMIT_ENV: f"{own},{unseen}={CAP_MIB}M",
            "CUDA_VISIBLE_DEVICES": uuids[0],
        },
        "pipe_removed": {PIPE_ENV: None},
    }
    code = kernel_code("env_variants", variants=variants, chunk_mib=CHUNK_MIB,
                       ceiling_mib=admin + 2 * GiB // MiB, given=given)  # fmt: skip
    return k.run(code, run.within(300))


def greedy_and_neighbour(run: GpuCheck, c: Check, mode: str) -> None:
    """Two capped PyTorch kernels on GPU 0: the neighbour holds 1 GiB, the greedy one switches
    its framework limit off and allocates up to the whole GPU."""
    greedy = run.start_kernel(c, f"{mode}-greedy.ipynb", {"memory_limit_mb": CAP_MIB})
    calm = run.start_kernel(c, f"{mode}-neighbour.ipynb", {"memory_limit_mb": CAP_MIB})
    for k in (greedy, calm):
        expect_held(run, c, k, mode, CAP_MIB)
    if not framework(c, greedy, "torch"):
        return
    held = alloc(calm, run, GiB // MiB, framework_limit_off=False, keep_mib=GiB // MiB)
    c.expect("the neighbour holds 1 GiB", held.get("kept_mib") == GiB // MiB, neighbour=held)
    whole = int(run.gpu_total / MiB)
    out = alloc(greedy, run, whole, framework_limit_off=True, keep_mib=whole)
    c.measured["greedy"] = out
    expect_refused(c, out, CAP_MIB, "its cap")
    after = calm.run(kernel_code("torch_neighbour", extra_mib=GiB // MiB), run.within(120))
    c.measured["neighbour"] = after
    c.expect("the neighbour's memory still holds what it wrote", after.get("intact"))
    c.expect("the neighbour allocates 1 GiB more and runs a matrix product",
             after.get("extra_alloc") == "ok" and after.get("matmul_ok"), neighbour=after)  # fmt: skip
    pid = run.server.api("GET", f"tfgpu/api/kernels/{calm.id}").get("pid")
    c.expect("the neighbour is the same kernel process", pid == calm.pid, pid=pid)
    obs = run.observe(f"{mode} greedy and neighbour", {greedy: 0, calm: 0})
    c.measured["nvml_used_mib"] = {
        nb: mib(kernel["nvml_used"]) for nb, kernel in obs["kernels"].items()
    }


def attribution(run: GpuCheck, c: Check, mode: str) -> None:
    """Every kernel of this server's checks is listed on the GPU with its kernel and notebook
    in GET gpus; under MPS the MPS server's own row is named so and given to no kernel."""
    observations = run.observations[run.phase_observations :]
    mps_servers = set()
    for obs in observations:
        problems = []
        for row in obs["rows"]:
            if row.get("mps") == "server":
                mps_servers.add(row["pid"])
                if row["kernel_id"]:
                    problems.append(row)
            elif (row["ours"] or row["kernel_id"]) and not (
                row["ours"]
                and row["kernel_id"] == row["expected_kernel_id"]
                and row["notebook"] == row["expected_notebook"]
            ):
                problems.append(row)
        missing = [
            nb for nb, kernel in obs["kernels"].items() if kernel["on_gpu"] and not kernel["listed"]
        ]
        c.expect(f"{obs['label']}: each kernel listed and attributed", not problems and not missing,
                 **({"problems": problems} if problems else {}),
                 **({"not_listed": missing} if missing else {}))  # fmt: skip
    c.measured.update(observations=len(observations), mps_server_pids=sorted(mps_servers))
    if not observations:
        return c.skip(
            "no kernel of this server held GPU memory (no PyTorch in the kernel's Python)"
        )
    if mode == "mps":
        c.expect("GET gpus lists the MPS server, as the MPS server", mps_servers)
    return None


def kernel_start_cost(run: GpuCheck, c: Check, mode: str, runs: int = 3) -> None:
    """Kernels started one at a time: POST api/sessions to the kernel's first answer, and its
    first CUDA work; beside the same on the server without hard caps."""
    starts = []
    for i in range(runs):
        k = run.start_kernel(c, f"{mode}-start-{i}.ipynb", {"memory_limit_mb": CAP_MIB})
        row: dict[str, Any] = {"start_s": c.measured["kernel_start_s"][k.notebook]}
        if (i == 0 and framework(c, k, "torch")) or (i and not c.skipped):
            row.update(k.run(kernel_code("cuda_start"), run.within(120)))
        starts.append(row)
        run.stop_kernels([k])  # alone: the next start shares nothing with it
    c.measured["starts"] = starts
    medians = {
        key: round(sorted(s[key] for s in starts)[len(starts) // 2], 3)
        for key in ("start_s", "first_cuda_s")
        if all(key in s for s in starts)
    }
    c.measured["median"] = medians
    run.start_costs[mode] = medians
    base = run.start_costs.get("off")
    if mode != "off" and base:
        c.measured["added_to_off_s"] = {
            key: round(value - base[key], 3) for key, value in medians.items() if key in base
        }

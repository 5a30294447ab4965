"""Render an effective policy into a kernel's environment.

Environment variables are what every framework (and every process the kernel starts) reads
before touching the GPU; the knobs that exist only in-process are applied by the kernel
bootstrap from ``TFGPU_POLICY``, the launch document (``launch.py``).

What a cap means: ``memory_limit_mb`` is what NVML (and ``nvidia-smi``) shows for the kernel's
process on a GPU, the figure admins and users read and the enforcer compares. A process holds
more there than its framework allocates: the CUDA context, the libraries' kernels, the
framework's own runtime. So the frameworks get less than the cap, the **framework limit**: the
cap less a **context reserve**, the room that process needs on that GPU model and driver
(measured by the server where it can; see ``ContextReserve``). A kernel that stays within its
framework limit then stays within its cap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from jupyter_tfgpu.gpu import DeviceInfo, MiB
from jupyter_tfgpu.policy.model import resolve_device

# Every variable a policy may set; a kernel's inherited values for these are replaced, so
# the server's own environment cannot leak a different policy into a kernel.
POLICY_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_CLIENT_MEM_FRACTION",
    "PYTORCH_ALLOC_CONF",
    "PYTORCH_CUDA_ALLOC_CONF",
)
# The MPS client's share of each GPU's SMs, in percent (NVIDIA's MPS environment variables).
THREAD_PERCENTAGE_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
# CUDA stops at the first invalid entry, so this hides every GPU from CUDA, TF, torch and JAX.
CPU_ONLY = "-1"
# The context reserve before the server has measured one on a GPU model and driver, in MiB.
# From the H200 run of docs/gpu-validation.md (driver 580.159.04, CUDA 13.0): a JAX process
# whose allocator pool was 25,770 MiB (its bytes_limit) showed 26,318-26,320 MiB in NVML, 548-550
# MiB outside the pool; a torch process with 1,024 MiB reserved showed 1,542 MiB, 518 outside.
# The larger, so that neither framework passes its cap there.
STARTING_CONTEXT_MB = 550


@dataclass(frozen=True)
class ContextReserve:
    """The room a kernel's process needs under its cap beyond its framework's own allocations
    (CUDA context, libraries), on the GPUs it gets, in MiB, and where the figure comes from:
    "measured" (on this server, for that GPU model and driver), "starting value"
    (``STARTING_CONTEXT_MB``, nothing measured yet) or "simulated" (no CUDA context at all)."""

    mb: int
    source: str
    measured_on: str | None = None  # the GPU model(s) and driver the measurement is for


def framework_limit_mb(cap_mb: int, reserve_mb: int) -> int:
    """The limit the frameworks get under a cap: the cap less the reserve, or the cap itself
    when it leaves no room (then any GPU use passes the cap; ``limit_note`` says so)."""
    return cap_mb - reserve_mb if cap_mb > reserve_mb else cap_mb


def limit_note(cap_mb: int, reserve: ContextReserve) -> str | None:
    """What to say of a cap that leaves no room for the CUDA context; None when it does."""
    if cap_mb > reserve.mb:
        return None
    return (
        f"memory_limit_mb {cap_mb} is at or below the {reserve.mb} MiB this GPU needs for the "
        "CUDA context and libraries alone: any GPU use passes the cap"
    )


def visible_devices(policy: Mapping[str, Any], devices: list[DeviceInfo]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES entries: UUIDs where known (stable across reboots), else as given.

    ``"auto"`` must have been resolved by placement before a policy is rendered.
    """
    chosen = policy.get("devices")
    if chosen is None or chosen == "auto":
        return None
    return [resolve_device(token, devices) or str(token) for token in chosen]


def memory_fraction(
    policy: dict[str, Any], devices: list[DeviceInfo], limit_mb: int | None = None
) -> float | None:
    """The limit as a share of the smallest visible GPU, for JAX (which takes a fraction);
    ``limit_mb`` (the framework limit) instead of the policy's cap when given."""
    limit = limit_mb if limit_mb is not None else policy.get("memory_limit_mb")
    if not limit:
        return None
    uuids = visible_devices(policy, devices)
    totals = [
        total
        for info in devices
        for uuid, total in [(info.uuid, info.memory_total)]
        + [(m.uuid, m.memory_total) for m in info.mig_instances]
        if total and (uuids is None or uuid in uuids)
    ]
    if not totals:
        return None
    return round(min(1.0, limit * MiB / min(totals)), 4)


def framework_limit(policy: Mapping[str, Any], reserve: ContextReserve | None) -> int | None:
    """The framework limit for a policy and the reserve of its GPUs; None without a cap, without
    a reserve, or on the CPU only."""
    cap = policy.get("memory_limit_mb")
    if not cap or reserve is None or policy.get("devices") == []:
        return None
    return framework_limit_mb(int(cap), reserve.mb)


def render_env(
    policy: dict[str, Any],
    devices: list[DeviceInfo],
    inherited: Mapping[str, str] | None = None,
    reserve: ContextReserve | None = None,
) -> dict[str, str | None]:
    """Variables to set in the kernel's environment; ``None`` means remove the variable.

    With ``reserve``, JAX's fraction is the framework limit's share of the GPU, not the cap's.
    """
    env: dict[str, str | None] = dict.fromkeys(POLICY_VARIABLES)
    uuids = visible_devices(policy, devices)
    if uuids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(uuids) if uuids else CPU_ONLY
    growth = policy.get("memory_growth")
    if growth is not None:
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true" if growth else "false"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false" if growth else "true"
    fraction = memory_fraction(policy, devices, framework_limit(policy, reserve))
    if fraction is not None:
        # One name only: jaxlib 0.11 refuses to start its GPU backend (and falls back to the
        # CPU) when both are set. Every jaxlib reads this one; newer ones call it deprecated.
        # XLA_CLIENT_MEM_FRACTION stays in POLICY_VARIABLES so an inherited value is removed.
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction}"
    if policy.get("allocator") == "cuda_malloc_async":
        env["TF_GPU_ALLOCATOR"] = "cuda_malloc_async"
        # PyTorch reads PYTORCH_ALLOC_CONF since 2.9 and the older name before it.
        env["PYTORCH_ALLOC_CONF"] = env["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"
    env.update(runtime_env(policy, inherited or {}))
    env.update(mps_env(policy, inherited or {}))
    return env


def mps_env(policy: Mapping[str, Any], inherited: Mapping[str, str]) -> dict[str, str]:
    """The compute share an MPS client reads (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``), when the
    policy sets one; CUDA ignores it outside MPS.

    A share already in the server's environment (an admin's or a platform's) stays a ceiling:
    the kernel gets the lower of the two, since a client's value only lowers MPS's own.
    """
    share = policy.get("compute_percent")
    if share is None:
        return {}
    try:
        ceiling = int(float(inherited.get(THREAD_PERCENTAGE_ENV, "")))
    except (ValueError, OverflowError):  # not a number, nan, inf
        ceiling = None
    if ceiling is not None and 1 <= ceiling < share:
        share = ceiling
    return {THREAD_PERCENTAGE_ENV: str(share)}


def runtime_env(policy: dict[str, Any], inherited: Mapping[str, str]) -> dict[str, str]:
    """Variables for the runtime settings that frameworks (also) read from the environment.

    Only set when the policy has an opinion; the user's own values are kept otherwise.
    """
    env: dict[str, str] = {}
    if policy.get("deterministic"):
        env["TF_DETERMINISTIC_OPS"] = "1"
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS needs it for reproducible results
        flag = "--xla_gpu_deterministic_ops=true"
        flags = inherited.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = flags if flag in flags else f"{flags} {flag}".strip()
    tf32 = policy.get("tf32")
    if tf32 is False:
        env["NVIDIA_TF32_OVERRIDE"] = "0"  # cuBLAS and cuDNN, for every framework
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "float32"
    elif tf32 is True:
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "tensorfloat32"
    return env


def encode(document: dict[str, Any]) -> str:
    """Compact JSON for an environment variable."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True)

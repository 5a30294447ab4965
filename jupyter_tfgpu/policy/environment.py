"""Render an effective policy into a kernel's environment.

Environment variables are what every framework (and every process the kernel starts) reads
before touching the GPU; the knobs that exist only in-process are applied by the kernel
bootstrap from ``TFGPU_POLICY``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.policy.model import policy_fields, resolve_device

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
# CUDA stops at the first invalid entry, so this hides every GPU from CUDA, TF, torch and JAX.
CPU_ONLY = "-1"


def visible_devices(policy: dict[str, Any], devices: list[DeviceInfo]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES entries: UUIDs where known (stable across reboots), else as given.

    ``"auto"`` must have been resolved by placement before a policy is rendered.
    """
    chosen = policy.get("devices")
    if chosen is None or chosen == "auto":
        return None
    return [resolve_device(token, devices) or str(token) for token in chosen]


def memory_fraction(policy: dict[str, Any], devices: list[DeviceInfo]) -> float | None:
    """The limit as a share of the smallest visible GPU, for JAX (which takes a fraction)."""
    limit = policy.get("memory_limit_mb")
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
    return round(min(1.0, limit * 2**20 / min(totals)), 4)


def render_env(
    policy: dict[str, Any],
    devices: list[DeviceInfo],
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str | None]:
    """Variables to set in the kernel's environment; ``None`` means remove the variable."""
    env: dict[str, str | None] = dict.fromkeys(POLICY_VARIABLES)
    uuids = visible_devices(policy, devices)
    if uuids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(uuids) if uuids else CPU_ONLY
    growth = policy.get("memory_growth")
    if growth is not None:
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true" if growth else "false"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false" if growth else "true"
    fraction = memory_fraction(policy, devices)
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
    return env


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


def policy_document(
    policy: dict[str, Any], devices: list[DeviceInfo], **context: Any
) -> dict[str, Any]:
    """The JSON put in ``TFGPU_POLICY`` for the kernel bootstrap: fields, UUIDs, context."""
    document = {name: policy.get(name) for name in policy_fields()}
    if policy.get("devices") != "auto":
        document["devices"] = visible_devices(policy, devices)
    document.update(context)
    return document


def encode(document: dict[str, Any]) -> str:
    """Compact JSON for an environment variable."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True)

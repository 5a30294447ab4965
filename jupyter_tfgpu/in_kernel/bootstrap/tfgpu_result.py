"""One framework's outcome of applying a policy: applied, skipped (with reasons), pending, errors,
and the environment the framework reads. Shared by the memory and the runtime settings.
"""

from __future__ import annotations

import os

RESTART = "TensorFlow already initialized its devices; restart the kernel to apply"
# TensorFlow's RuntimeError for devices ("... cannot be modified after being initialized") and
# threads ("... cannot be modified after initialization") once its context exists.
_INITIALIZED = "cannot be modified after"
# What each framework reads from the environment when it initializes its GPU backend.
ENV_READ = {
    "tensorflow": ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "TF_GPU_ALLOCATOR"),
    "keras": ("KERAS_BACKEND",),
    "torch": (
        "CUDA_VISIBLE_DEVICES",
        "PYTORCH_ALLOC_CONF",
        "PYTORCH_CUDA_ALLOC_CONF",
        "CUBLAS_WORKSPACE_CONFIG",
        "NVIDIA_TF32_OVERRIDE",
    ),
    "jax": (
        "CUDA_VISIBLE_DEVICES",
        "JAX_PLATFORMS",
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "XLA_CLIENT_MEM_FRACTION",
        "XLA_PYTHON_CLIENT_ALLOCATOR",
        "XLA_FLAGS",
        "JAX_DEFAULT_MATMUL_PRECISION",
    ),
}


def new_result(framework: str) -> dict:
    """An empty outcome for ``framework``, with the environment it will read."""
    return {
        "applied": [],
        "skipped": [],
        "pending": [],
        "errors": [],
        "env": {name: os.environ.get(name) for name in ENV_READ[framework]},
    }


def skip(result: dict, setting: str, value, reason: str) -> None:
    """Record a setting not applied, and why."""
    result["skipped"].append({"setting": setting, "value": value, "reason": reason})


def failed(result: dict, setting: str, value, exc: BaseException) -> None:
    """Record a setting whose call raised: an error, and skipped."""
    message = f"{type(exc).__name__}: {exc}"
    result["errors"].append(f"{setting}: {message}")
    skip(result, setting, value, f"failed: {message}")


def attempt(result: dict, setting: str, value, call, **extra) -> None:
    """Run one framework config call; an already-initialized context means 'restart to apply'."""
    try:
        call()
    except RuntimeError as exc:
        if _INITIALIZED in str(exc):
            skip(result, setting, value, RESTART)
        else:
            failed(result, setting, value, exc)
    except Exception as exc:
        failed(result, setting, value, exc)
    else:
        result["applied"].append(dict({"setting": setting, "value": value}, **extra))


def merge(target: dict, outcome: dict) -> None:
    """Move a lazily applied setting from ``pending`` to ``applied`` / ``skipped``."""
    done = {item["setting"] for item in outcome["applied"] + outcome["skipped"]}
    target["pending"] = [item for item in target.get("pending", []) if item["setting"] not in done]
    for key in ("applied", "skipped", "errors"):
        target.setdefault(key, []).extend(outcome.get(key, []))

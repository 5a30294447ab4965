"""The in-process half of the kernel bootstrap: what happens when a framework is imported.

``tfgpu_bootstrap`` imports this module only when a framework is imported (with its siblings it
is most of the bootstrap's code, and compiling it on every Python start-up would cost
milliseconds where no ``.pyc`` is cached); its public names are reached as
``tfgpu_bootstrap.<name>``. Per framework it applies the runtime settings (``tfgpu_runtime``),
then the memory settings (``tfgpu_memory``), records the outcome (``tfgpu_record``) and hands the
framework to the GPU memory reporter (``tfgpu_report``), with the way to note its failures in the
record. It does not import ``tfgpu_bootstrap`` back: the names it shares come from
``tfgpu_protocol``.

It imports nothing from ``jupyter_tfgpu`` and never imports a framework itself: the framework
module it acts on is handed in. A failure of its own never reaches the user's code: it is
recorded and reported once on stderr, prefixed ``jupyter-tfgpu:``. The environment variables
(CUDA_VISIBLE_DEVICES, TF_FORCE_GPU_ALLOW_GROWTH, ...) are the provisioner's; the bootstrap only
records the values each framework will see.
"""

from __future__ import annotations

import sys
import time

import tfgpu_memory
import tfgpu_report
import tfgpu_runtime
from tfgpu_policy import load_policy
from tfgpu_protocol import HOOKED_MODULES
from tfgpu_record import current_policy, error, record, report_status, set_policy, write_record
from tfgpu_result import merge, new_result, skip
from tfgpu_state import STATE

__all__ = [
    "apply_jax",
    "apply_now",
    "apply_tensorflow",
    "apply_torch",
    "framework_imported",
    "load_policy",
    "record",
    "report_status",
]


# -- one framework: runtime settings, then memory settings ------------------------------------------


def apply_tensorflow(tf, policy: dict) -> dict:
    """Apply the policy's in-process TensorFlow knobs; returns applied / skipped (with reasons)."""
    result = new_result("tensorflow")
    tfgpu_runtime.apply_runtime_tensorflow(tf, policy, result)
    tfgpu_memory.apply_memory_tensorflow(tf, policy, result)
    return result


def apply_torch(torch, policy: dict, on_cuda_init=None) -> dict:
    """Register the memory cap for when CUDA initializes (at once if it has); never inits CUDA."""
    result = new_result("torch")
    tfgpu_runtime.apply_runtime_torch(torch, policy, result)
    tfgpu_memory.apply_memory_torch(torch, policy, result, on_cuda_init)
    return result


def apply_jax(jax, policy: dict) -> dict:
    """JAX reads its GPU knobs from the environment at backend init: record what it will see."""
    result = new_result("jax")
    tfgpu_runtime.apply_runtime_jax(jax, policy, result)
    return result


def apply_keras(keras, policy: dict) -> dict:
    """Keras's global dtype policy (mixed precision), set as Keras is imported."""
    result = new_result("keras")
    tfgpu_runtime.apply_runtime_keras(keras, policy, result)
    if "tensorflow" in STATE.frameworks and result["applied"]:
        # TensorFlow recorded mixed precision as pending until Keras came: it is done now.
        merge(STATE.frameworks["tensorflow"], {"applied": list(result["applied"]), "skipped": []})
    return result


APPLY = {
    "tensorflow": apply_tensorflow,
    "keras": apply_keras,
    "torch": apply_torch,
    "jax": apply_jax,
}


# -- the hook's entry, and apply_now ---------------------------------------------------------------


def framework_imported(name: str, module) -> None:
    """The post-import hook: first import of a framework in this process finished executing."""
    try:
        with STATE.lock:
            if name in STATE.hooked:
                return
            STATE.hooked.add(name)
            STATE.frameworks.setdefault(name, {})["hooked_at"] = round(time.time(), 3)
        # The reporter first (it only looks, later), so the record written next shows it.
        _watch(name, module)
        _apply(name, module, "import")
    except Exception as exc:
        error(name, f"could not apply the policy ({type(exc).__name__}: {exc})")


def apply_now(framework_name: str, policy: dict | str | None = None) -> dict:
    """Re-apply the policy (``policy`` replaces it when given) to an already imported framework."""
    if framework_name not in APPLY:
        raise ValueError(
            f"framework must be one of {', '.join(HOOKED_MODULES)}, not {framework_name!r}"
        )
    try:
        if policy is not None:
            set_policy(policy if isinstance(policy, str) else _dumps(policy), framework_name)
        module = sys.modules.get(framework_name)
        if module is None:
            result = {"applied": [], "skipped": [], "pending": [], "errors": []}
            reason = f"{framework_name} is not imported yet; the policy applies when it is"
            skip(result, "policy", None, reason)
            return result
        return _apply(framework_name, module, "apply_now")
    except Exception as exc:
        message = f"could not apply the policy ({type(exc).__name__}: {exc})"
        error(framework_name, message)
        return {"applied": [], "skipped": [], "pending": [], "errors": [message]}


def _apply(name: str, module, source: str) -> dict:
    """Apply the current policy to one imported framework and record the outcome."""
    with STATE.lock:
        entry = STATE.frameworks.setdefault(name, {"hooked_at": None})
        policy = current_policy()
        if policy is None:
            outcome = new_result(name)
            skip(outcome, "policy", None, STATE.policy_note)
        elif name == "torch":
            outcome = apply_torch(module, policy, _torch_initialized)
        else:
            outcome = APPLY[name](module, policy)
        errors = outcome.pop("errors")
        entry.update(outcome)
        entry.update(
            source=source,
            applied_at=round(time.time(), 3),
            apply_count=entry.get("apply_count", 0) + 1,
        )
    for message in errors:
        error(name, message, write=False)
    write_record()
    return dict(outcome, errors=errors)


def _torch_initialized(outcome: dict) -> None:
    """CUDA initialized after the import: record how the deferred torch cap went."""
    with STATE.lock:
        merge(STATE.frameworks.setdefault("torch", {}), dict(outcome, errors=[]))
    for message in outcome["errors"]:
        error("torch", message, write=False)
    write_record()


def _watch(name: str, module) -> None:
    """Hand the framework to the GPU memory reporter, which starts if this process can report."""
    if name == "keras":
        return  # Keras holds no GPU memory of its own; its backend framework reports
    try:
        tfgpu_report.framework_imported(name, module, _reporter_failed)
    except Exception as exc:
        message = f"could not start the GPU memory reporter ({type(exc).__name__}: {exc})"
        error(name, message, write=False, announce=False)


def _reporter_failed(message: str) -> None:
    """A failure of the reporter's thread: one line in the record, nothing on stderr."""
    error(None, f"GPU memory reporter: {message}", announce=False)


def _dumps(value) -> str:
    import json

    return json.dumps(value)

"""The in-process half of the kernel bootstrap: apply the policy, keep and write the record.

``tfgpu_bootstrap`` imports this module only when a framework is imported (it is most of the
bootstrap's code, and compiling it on every Python start-up would cost milliseconds where no
``.pyc`` is cached); its public names are reached as ``tfgpu_bootstrap.<name>``.

It imports nothing from ``jupyter_tfgpu`` and never imports a framework itself: the framework
module it acts on is handed in. A failure of its own never reaches the user's code: it is
recorded and reported once on stderr, prefixed ``jupyter-tfgpu:``. The environment variables
(CUDA_VISIBLE_DEVICES, TF_FORCE_GPU_ALLOW_GROWTH, ...) are the provisioner's; this module only
records the values each framework will see.
"""

from __future__ import annotations

import _thread
import os
import sys
import time

__all__ = [
    "FRAMEWORKS",
    "apply_jax",
    "apply_now",
    "apply_tensorflow",
    "apply_torch",
    "framework_imported",
    "load_policy",
    "record",
    "report_status",
]

FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")
NO_GPU = "no GPU visible"
PENDING = "pending until CUDA initializes"
RESTART = "TensorFlow already initialized its devices; restart the kernel to apply"
HIDDEN = "GPUs hidden by the policy (devices: [])"
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
ALLOCATORS = ("cuda_malloc_async", "default")

# The torch lazy callback may run while apply_torch still holds the lock: reentrant.
_lock = _thread.RLock()
_hooked: set = set()  # frameworks the policy was applied to at import (once per process)
_frameworks: dict = {}
_errors: list = []
_policy: dict | None = None
_policy_loaded = False
_policy_note = None  # why there is no policy to apply, when there is none
_warned = False
_report_failed = False


# -- policy -------------------------------------------------------------------------------------


def load_policy(raw: str | None) -> tuple[dict | None, list[str]]:
    """Parse and check a ``TFGPU_POLICY`` value: (policy or None, problems); bad fields unset."""
    import json

    if not raw:
        return None, []
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return None, [f"TFGPU_POLICY is not valid JSON ({exc})"]
    if not isinstance(data, dict):
        return None, [f"TFGPU_POLICY must be a JSON object, not {type(data).__name__}"]
    policy = dict(data)
    problems = []

    def reject(field: str, expected: str) -> None:
        problems.append(
            f"policy field {field!r} must be {expected}, not {policy[field]!r}; ignored"
        )
        policy[field] = None

    if not isinstance(policy.get("memory_growth"), (bool, type(None))):
        reject("memory_growth", "true, false or null")
    limit = policy.get("memory_limit_mb")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 1 <= limit < 2**53:
            reject("memory_limit_mb", "a number of MiB >= 1 or null")
        else:
            policy["memory_limit_mb"] = int(limit)
    devices = policy.get("devices")
    if devices is not None and not (
        isinstance(devices, list)
        and all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in devices)
    ):
        reject("devices", "a list of GPU UUIDs or indices, or null")
    if policy.get("allocator") not in (*ALLOCATORS, None):
        reject("allocator", f"one of {', '.join(ALLOCATORS)} or null")
    for field in ("notebook", "kernel_id"):
        if not isinstance(policy.get(field), (str, type(None))):
            reject(field, "a string or null")
    _runtime().check(policy, reject)
    return policy, problems


def _sibling(name: str):
    """A module of this folder, imported on first use even if the user changed sys.path."""
    module = sys.modules.get(name)
    if module is None:
        import importlib

        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, here)
        try:
            module = importlib.import_module(name)
        finally:
            sys.path.remove(here)
    return module


def _runtime():
    """``tfgpu_runtime``: runtime settings beyond memory."""
    return _sibling("tfgpu_runtime")


def _current_policy() -> dict | None:
    """The policy from the environment, parsed on first use; problems are reported once."""
    with _lock:
        if not _policy_loaded:
            _set_policy(os.environ.get("TFGPU_POLICY"), None)
        return _policy


def _set_policy(raw: str | None, framework: str | None) -> None:
    global _policy, _policy_loaded, _policy_note
    with _lock:
        _policy_loaded = True
        _policy, problems = load_policy(raw)
        _policy_note = None
        if _policy is None:
            _policy_note = (
                "the policy could not be read (see errors)" if problems else "no policy set"
            )
    for problem in problems:
        error(framework, problem + ("" if _policy else "; no GPU policy applied"), write=False)


# -- in-process knobs, one function per framework ------------------------------------------------


def _result(framework: str) -> dict:
    return {
        "applied": [],
        "skipped": [],
        "pending": [],
        "errors": [],
        "env": {name: os.environ.get(name) for name in ENV_READ[framework]},
    }


def _skip(result: dict, setting: str, value, reason: str) -> None:
    result["skipped"].append({"setting": setting, "value": value, "reason": reason})


def _failed(result: dict, setting: str, value, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"
    result["errors"].append(f"{setting}: {message}")
    _skip(result, setting, value, f"failed: {message}")


def _tf_call(result: dict, setting: str, value, call, **extra) -> None:
    """Run one TensorFlow config call; an already-initialized context means 'restart to apply'."""
    try:
        call()
    except RuntimeError as exc:
        if _INITIALIZED in str(exc):
            _skip(result, setting, value, RESTART)
        else:
            _failed(result, setting, value, exc)
    except Exception as exc:
        _failed(result, setting, value, exc)
    else:
        result["applied"].append(dict({"setting": setting, "value": value}, **extra))


def apply_tensorflow(tf, policy: dict) -> dict:
    """Apply the policy's in-process TensorFlow knobs; returns applied / skipped (with reasons)."""
    result = _result("tensorflow")
    _runtime().apply_tensorflow(tf, policy, result, _tf_call, _skip)
    config = tf.config
    devices = policy.get("devices")
    limit = policy.get("memory_limit_mb")
    growth = policy.get("memory_growth")
    if devices == []:
        # Also hides GPUs that CUDA_VISIBLE_DEVICES did not (a process that reset it).
        _tf_call(result, "devices", [], lambda: config.set_visible_devices([], "GPU"))
    if limit is None and growth is None:
        return result
    gpus = list(config.list_physical_devices("GPU"))
    reason = NO_GPU if not gpus else HIDDEN if devices == [] else None
    if reason:
        for setting, value in (("memory_limit_mb", limit), ("memory_growth", growth)):
            if value is not None:
                _skip(result, setting, value, reason)
        return result
    names = [gpu.name for gpu in gpus]
    if limit is not None:

        def limit_all() -> None:
            for gpu in gpus:
                virtual = [config.LogicalDeviceConfiguration(memory_limit=limit)]
                config.set_logical_device_configuration(gpu, virtual)

        _tf_call(result, "memory_limit_mb", limit, limit_all, devices=names)
        if growth is not None:
            # TF refuses set_memory_growth on GPUs with virtual devices; its allocator still
            # honours TF_FORCE_GPU_ALLOW_GROWTH, which the provisioner sets from the policy.
            wanted = "true" if growth else "false"
            env = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")
            if (env or "").strip().lower() == wanted or (env is None and not growth):
                result["applied"].append(
                    {
                        "setting": "memory_growth",
                        "value": growth,
                        "via": "TF_FORCE_GPU_ALLOW_GROWTH",
                    }
                )
            else:
                _skip(
                    result,
                    "memory_growth",
                    growth,
                    "TensorFlow cannot combine set_memory_growth with memory_limit_mb and "
                    f"TF_FORCE_GPU_ALLOW_GROWTH is {env!r}, not {wanted!r}",
                )
    elif growth is not None:

        def grow_all() -> None:
            for gpu in gpus:
                config.experimental.set_memory_growth(gpu, bool(growth))

        _tf_call(result, "memory_growth", growth, grow_all, devices=names)
    return result


def _torch_limit(torch, limit: int) -> dict:
    """Cap each visible CUDA device at ``limit`` MiB; runs once CUDA is initialized."""
    outcome = {"applied": [], "skipped": [], "errors": []}
    try:
        count = torch.cuda.device_count()
        if not count:
            _skip(outcome, "memory_limit_mb", limit, NO_GPU)
            return outcome
        fractions = {}
        for index in range(count):
            total = torch.cuda.get_device_properties(index).total_memory
            fraction = min(1.0, limit * 2**20 / total)
            torch.cuda.set_per_process_memory_fraction(fraction, index)
            fractions[str(index)] = round(fraction, 4)
        outcome["applied"].append(
            {"setting": "memory_limit_mb", "value": limit, "fractions": fractions}
        )
    except Exception as exc:
        _failed(outcome, "memory_limit_mb", limit, exc)
    return outcome


def _merge(target: dict, outcome: dict) -> None:
    """Move a lazily applied setting from ``pending`` to ``applied`` / ``skipped``."""
    done = {item["setting"] for item in outcome["applied"] + outcome["skipped"]}
    target["pending"] = [item for item in target.get("pending", []) if item["setting"] not in done]
    for key in ("applied", "skipped", "errors"):
        target.setdefault(key, []).extend(outcome.get(key, []))


def apply_torch(torch, policy: dict, on_cuda_init=None) -> dict:
    """Register the memory cap for when CUDA initializes (at once if it has); never inits CUDA."""
    result = _result("torch")
    _runtime().apply_torch(torch, policy, result, _tf_call, _skip)
    limit = policy.get("memory_limit_mb")
    if limit is None:
        return result
    version = getattr(torch, "version", None)
    built_for_gpu = getattr(version, "cuda", None) or getattr(version, "hip", None)
    # CUDA stops at the first invalid entry: "" or "-1" first hides every GPU.
    first_visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    if policy.get("devices") == [] or first_visible in ("", "-1") or not built_for_gpu:
        _skip(result, "memory_limit_mb", limit, NO_GPU)
        return result
    returned = []

    def cap() -> None:
        # Runs inside torch's CUDA initialization: an exception here would break it.
        try:
            outcome = _torch_limit(torch, limit)
            if returned and on_cuda_init is not None:
                on_cuda_init(outcome)
            elif not returned:
                _merge(result, outcome)
        except Exception:
            pass

    result["pending"].append({"setting": "memory_limit_mb", "value": limit, "reason": PENDING})
    torch.cuda._lazy_call(cap)
    returned.append(True)
    return result


def apply_jax(jax, policy: dict) -> dict:
    """JAX reads its GPU knobs from the environment at backend init: record what it will see."""
    result = _result("jax")
    _runtime().apply_jax(jax, policy, result, _tf_call, _skip)
    return result


def apply_keras(keras, policy: dict) -> dict:
    """Keras's global dtype policy (mixed precision), set as Keras is imported."""
    result = _result("keras")
    _runtime().apply_keras(keras, policy, result, _tf_call, _skip)
    if "tensorflow" in _frameworks and result["applied"]:
        # TensorFlow recorded mixed precision as pending until Keras came: it is done now.
        _merge(_frameworks["tensorflow"], {"applied": list(result["applied"]), "skipped": []})
    return result


APPLY = {
    "tensorflow": apply_tensorflow,
    "keras": apply_keras,
    "torch": apply_torch,
    "jax": apply_jax,
}


# -- the record, shared with the server through TFGPU_REPORT_DIR ----------------------------------


def record() -> dict:
    """What this process applied: pid, policy, per-framework applied / skipped, errors (a copy)."""
    import json

    policy = _current_policy()
    reporter = report_status()
    with _lock:
        data = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "policy": policy,
            "frameworks": _frameworks,
            "errors": _errors,
            "reporter": reporter,
        }
        return json.loads(json.dumps(data, default=repr))


def _write_report() -> None:
    """Write the record to $TFGPU_REPORT_DIR/<pid>.json: temp file (0600), then rename."""
    global _report_failed
    directory = os.environ.get("TFGPU_REPORT_DIR")
    if not directory or _report_failed:
        return
    import json

    tmp = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        pid = os.getpid()
        tmp = os.path.join(directory, f".{pid}.{time.monotonic_ns()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # the umask could only have narrowed it; be explicit
            json.dump(record(), fh, sort_keys=True)
        os.replace(tmp, os.path.join(directory, f"{pid}.json"))
    except Exception as exc:
        _report_failed = True  # once: a read-only or missing disk must not spam every import
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        error(None, f"could not write the report to {directory} ({type(exc).__name__}: {exc})")


def error(framework: str | None, message: str, write: bool = True, announce: bool = True) -> None:
    """Record a failure, say so once on stderr (the first announced one), and keep going."""
    global _warned
    with _lock:
        _errors.append({"framework": framework, "message": message, "at": round(time.time(), 3)})
        first = announce and not _warned
        _warned = _warned or announce
    if first:
        where = f"{framework}: " if framework else ""
        try:
            sys.stderr.write(
                f"jupyter-tfgpu: {where}{message}. Your code runs on; details and any later "
                f"problems in tfgpu_bootstrap.record()['errors'] (pid {os.getpid()}).\n"
            )
            sys.stderr.flush()
        except Exception:
            pass
    if write:
        _write_report()


def _apply(name: str, module, source: str) -> dict:
    """Apply the current policy to one imported framework and record the outcome."""
    with _lock:
        entry = _frameworks.setdefault(name, {"hooked_at": None})
        policy = _current_policy()
        if policy is None:
            outcome = _result(name)
            _skip(outcome, "policy", None, _policy_note)
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
    _write_report()
    return dict(outcome, errors=errors)


def _torch_initialized(outcome: dict) -> None:
    """CUDA initialized after the import: record how the deferred torch cap went."""
    with _lock:
        _merge(_frameworks.setdefault("torch", {}), dict(outcome, errors=[]))
    for message in outcome["errors"]:
        error("torch", message, write=False)
    _write_report()


def framework_imported(name: str, module) -> None:
    """The post-import hook: first import of a framework in this process finished executing."""
    try:
        with _lock:
            if name in _hooked:
                return
            _hooked.add(name)
            _frameworks.setdefault(name, {})["hooked_at"] = round(time.time(), 3)
        # The reporter first (it only looks, later), so the record written next shows it.
        _watch(name, module)
        _apply(name, module, "import")
    except Exception as exc:
        error(name, f"could not apply the policy ({type(exc).__name__}: {exc})")


def _watch(name: str, module) -> None:
    """Hand the framework to the GPU memory reporter, which starts if this process can report."""
    if name == "keras":
        return  # Keras holds no GPU memory of its own; its backend framework reports
    try:
        _report_module().framework_imported(name, module)
    except Exception as exc:
        message = f"could not start the GPU memory reporter ({type(exc).__name__}: {exc})"
        error(name, message, write=False, announce=False)


def _report_module():
    """``tfgpu_report``: the GPU memory reporter."""
    return _sibling("tfgpu_report")


def report_status() -> dict:
    """This process's GPU memory reporter: running, why not, reports sent, last answer."""
    try:
        return _report_module().status()
    except Exception as exc:
        return {"running": False, "reason": f"reporter unavailable ({type(exc).__name__})"}


def apply_now(framework_name: str, policy: dict | str | None = None) -> dict:
    """Re-apply the policy (``policy`` replaces it when given) to an already imported framework."""
    if framework_name not in APPLY:
        raise ValueError(
            f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework_name!r}"
        )
    try:
        if policy is not None:
            _set_policy(policy if isinstance(policy, str) else _dumps(policy), framework_name)
        module = sys.modules.get(framework_name)
        if module is None:
            result = {"applied": [], "skipped": [], "pending": [], "errors": []}
            reason = f"{framework_name} is not imported yet; the policy applies when it is"
            _skip(result, "policy", None, reason)
            return result
        return _apply(framework_name, module, "apply_now")
    except Exception as exc:
        message = f"could not apply the policy ({type(exc).__name__}: {exc})"
        error(framework_name, message)
        return {"applied": [], "skipped": [], "pending": [], "errors": [message]}


def _dumps(value) -> str:
    import json

    return json.dumps(value)

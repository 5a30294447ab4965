"""A policy's memory settings in process: GPU memory growth, a memory limit, hiding every GPU;
their check (``check``), and the allocator's, which the frameworks read from the environment.

Each ``apply_memory_*`` adds to a framework's result (``tfgpu_result``) what it applied, skipped
and why. JAX has none here: it reads its memory settings from the environment, which the
provisioner set. Imports no framework: the module to act on is handed in.

The cap (``memory_limit_mb``) is what NVML shows for the process. The framework gets the
``framework_limit_mb`` the server worked out with it: the cap less the room the CUDA context and
libraries take on that GPU, which the framework's allocator does not count. A document without
one (from an older server) gets the cap itself. The record names both.
"""

from __future__ import annotations

import os

from tfgpu_result import attempt, failed, merge, skip

# The policy's fields this module checks: applied here, or (the allocator, and the devices beyond
# TensorFlow's) read by the frameworks from the environment the provisioner set.
MEMORY_FIELDS = ("memory_growth", "memory_limit_mb", "devices", "allocator")
# The allocators a policy may name (TF_GPU_ALLOCATOR, PYTORCH_ALLOC_CONF: set by the provisioner).
ALLOCATORS = ("cuda_malloc_async", "default")
NO_GPU = "no GPU visible"
PENDING = "pending until CUDA initializes"
HIDDEN = "GPUs hidden by the policy (devices: [])"


def check(policy: dict, reject) -> None:
    """Unset memory fields of a TFGPU_POLICY document with the wrong type
    (``reject(field, expected)``): the policy's, and the framework limit the server added."""
    if not isinstance(policy.get("memory_growth"), (bool, type(None))):
        reject("memory_growth", "true, false or null")
    # The cap, and what the frameworks get under it (the cap less the CUDA context reserve).
    for field, least in (
        ("memory_limit_mb", 1),
        ("framework_limit_mb", 1),
        ("context_reserve_mb", 0),
    ):
        value = policy.get(field)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not least <= value < 2**53
        ):
            reject(field, f"a number of MiB >= {least} or null")
        else:
            policy[field] = int(value)
    devices = policy.get("devices")
    if devices is not None and not (
        isinstance(devices, list)
        and all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in devices)
    ):
        reject("devices", "a list of GPU UUIDs or indices, or null")
    if policy.get("allocator") not in (*ALLOCATORS, None):
        reject("allocator", f"one of {', '.join(ALLOCATORS)} or null")


def framework_limit(policy: dict) -> int | None:
    """The MiB a framework may allocate: the server's framework limit, else the cap."""
    limit = policy.get("memory_limit_mb")
    if limit is None:
        return None
    applied = policy.get("framework_limit_mb")
    return applied if applied is not None and applied <= limit else limit


def _limit_facts(policy: dict) -> dict:
    """What the record says beside ``memory_limit_mb``: the framework limit applied, and the
    reserve it leaves for the CUDA context (only when the server sent one)."""
    if policy.get("framework_limit_mb") is None:
        return {}
    return {
        "framework_limit_mb": framework_limit(policy),
        "context_reserve_mb": policy.get("context_reserve_mb"),
    }


def apply_memory_tensorflow(tf, policy: dict, result: dict) -> None:
    """TensorFlow's devices, memory limit and memory growth, before its context exists."""
    config = tf.config
    devices = policy.get("devices")
    limit = policy.get("memory_limit_mb")
    allowed = framework_limit(policy)
    growth = policy.get("memory_growth")
    if devices == []:
        # Also hides GPUs that CUDA_VISIBLE_DEVICES did not (a process that reset it).
        attempt(result, "devices", [], lambda: config.set_visible_devices([], "GPU"))
    if limit is None and growth is None:
        return
    gpus = list(config.list_physical_devices("GPU"))
    reason = NO_GPU if not gpus else HIDDEN if devices == [] else None
    if reason:
        for setting, value in (("memory_limit_mb", limit), ("memory_growth", growth)):
            if value is not None:
                skip(result, setting, value, reason)
        return
    names = [gpu.name for gpu in gpus]
    if limit is not None:

        def limit_all() -> None:
            for gpu in gpus:
                virtual = [config.LogicalDeviceConfiguration(memory_limit=allowed)]
                config.set_logical_device_configuration(gpu, virtual)

        attempt(result, "memory_limit_mb", limit, limit_all, devices=names, **_limit_facts(policy))
        if growth is not None:
            _growth_with_limit(result, growth)
    elif growth is not None:

        def grow_all() -> None:
            for gpu in gpus:
                config.experimental.set_memory_growth(gpu, bool(growth))

        attempt(result, "memory_growth", growth, grow_all, devices=names)


def _growth_with_limit(result: dict, growth: bool) -> None:
    """TF refuses set_memory_growth on GPUs with virtual devices; its allocator still honours
    TF_FORCE_GPU_ALLOW_GROWTH, which the provisioner sets from the policy."""
    wanted = "true" if growth else "false"
    env = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")
    if (env or "").strip().lower() == wanted or (env is None and not growth):
        result["applied"].append(
            {"setting": "memory_growth", "value": growth, "via": "TF_FORCE_GPU_ALLOW_GROWTH"}
        )
    else:
        skip(
            result,
            "memory_growth",
            growth,
            "TensorFlow cannot combine set_memory_growth with memory_limit_mb and "
            f"TF_FORCE_GPU_ALLOW_GROWTH is {env!r}, not {wanted!r}",
        )


def apply_memory_torch(torch, policy: dict, result: dict, on_cuda_init=None) -> None:
    """Register the memory cap for when CUDA initializes (at once if it has); never inits CUDA.

    A cap applied after this returns is handed to ``on_cuda_init(outcome)``.
    """
    limit = policy.get("memory_limit_mb")
    if limit is None:
        return
    version = getattr(torch, "version", None)
    built_for_gpu = getattr(version, "cuda", None) or getattr(version, "hip", None)
    # CUDA stops at the first invalid entry: "" or "-1" first hides every GPU.
    first_visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    if policy.get("devices") == [] or first_visible in ("", "-1") or not built_for_gpu:
        skip(result, "memory_limit_mb", limit, NO_GPU)
        return
    returned = []

    def cap() -> None:
        # Runs inside torch's CUDA initialization: an exception here would break it.
        try:
            outcome = _torch_limit(torch, limit, framework_limit(policy), _limit_facts(policy))
            if returned and on_cuda_init is not None:
                on_cuda_init(outcome)
            elif not returned:
                merge(result, outcome)
        except Exception:
            pass

    result["pending"].append({"setting": "memory_limit_mb", "value": limit, "reason": PENDING})
    torch.cuda._lazy_call(cap)
    returned.append(True)


def _torch_limit(torch, limit: int, allowed: int, facts: dict) -> dict:
    """Cap each visible CUDA device at ``allowed`` MiB (the framework limit under the cap
    ``limit``); runs once CUDA is initialized."""
    outcome = {"applied": [], "skipped": [], "errors": []}
    try:
        count = torch.cuda.device_count()
        if not count:
            skip(outcome, "memory_limit_mb", limit, NO_GPU)
            return outcome
        fractions = {}
        for index in range(count):
            total = torch.cuda.get_device_properties(index).total_memory
            fraction = min(1.0, allowed * 2**20 / total)
            torch.cuda.set_per_process_memory_fraction(fraction, index)
            fractions[str(index)] = round(fraction, 4)
        outcome["applied"].append(
            {"setting": "memory_limit_mb", "value": limit, **facts, "fractions": fractions}
        )
    except Exception as exc:
        failed(outcome, "memory_limit_mb", limit, exc)
    return outcome

"""Parse and check a ``TFGPU_POLICY`` document: what the provisioner rendered, as this process
reads it. Pure: no state, no framework; fields of the wrong type are unset and said why.
"""

from __future__ import annotations

import tfgpu_runtime
from tfgpu_bootstrap import POLICY_ENV

ALLOCATORS = ("cuda_malloc_async", "default")


def load_policy(raw: str | None) -> tuple[dict | None, list[str]]:
    """Parse and check a ``TFGPU_POLICY`` value: (policy or None, problems); bad fields unset."""
    import json

    if not raw:
        return None, []
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return None, [f"{POLICY_ENV} is not valid JSON ({exc})"]
    if not isinstance(data, dict):
        return None, [f"{POLICY_ENV} must be a JSON object, not {type(data).__name__}"]
    policy = dict(data)
    problems = []

    def reject(field: str, expected: str) -> None:
        problems.append(
            f"policy field {field!r} must be {expected}, not {policy[field]!r}; ignored"
        )
        policy[field] = None

    if not isinstance(policy.get("memory_growth"), (bool, type(None))):
        reject("memory_growth", "true, false or null")
    # The cap, and what the frameworks get under it (the cap less the CUDA context reserve).
    for field, least in (("memory_limit_mb", 1), ("framework_limit_mb", 1), ("context_reserve_mb", 0)):
        value = policy.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not least <= value < 2**53:
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
    for field in ("notebook", "kernel_id"):
        if not isinstance(policy.get(field), (str, type(None))):
            reject(field, "a string or null")
    tfgpu_runtime.check(policy, reject)
    return policy, problems

"""Parse and check a ``TFGPU_POLICY`` document: what the provisioner rendered, as this process
reads it. Pure: no state, no framework; fields of the wrong type are unset and said why.

Each concern checks the fields it applies (``tfgpu_memory.check``, ``tfgpu_runtime.check``); this
module parses the document, checks the fields that say where it runs, and asks them in turn.
"""

from __future__ import annotations

import tfgpu_memory
import tfgpu_runtime
from tfgpu_protocol import POLICY_ENV

# The policy's fields no concern here checks or applies: the server acts on them alone, by
# placement or through environment variables it sets (gpu_count: how many GPUs placement picks;
# the process gets the outcome as devices; compute_percent: CUDA's MPS client reads it from
# CUDA_MPS_ACTIVE_THREAD_PERCENTAGE). Every other field of the policy schema is a concern's
# (tfgpu_memory.MEMORY_FIELDS, tfgpu_runtime.RUNTIME_FIELDS).
SERVER_SIDE_FIELDS = ("gpu_count", "compute_percent")


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

    tfgpu_memory.check(policy, reject)
    for field in ("notebook", "kernel_id"):
        if not isinstance(policy.get(field), (str, type(None))):
            reject(field, "a string or null")
    tfgpu_runtime.check(policy, reject)
    return policy, problems

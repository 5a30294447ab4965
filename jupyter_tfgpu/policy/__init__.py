"""Per-notebook GPU policies. Nothing in this package knows about tornado."""

from jupyter_tfgpu.policy.admin import AdminPolicy
from jupyter_tfgpu.policy.model import CapExceeded, PolicyError, normalize_notebook_path, policy_schema, validate_policy
from jupyter_tfgpu.policy.environment import render_env
from jupyter_tfgpu.policy.service import PolicyService
from jupyter_tfgpu.policy.store import PolicyStore, StoreUnavailable

__all__ = [
    "AdminPolicy",
    "CapExceeded",
    "PolicyError",
    "PolicyService",
    "PolicyStore",
    "StoreUnavailable",
    "normalize_notebook_path",
    "policy_schema",
    "render_env",
    "validate_policy",
]

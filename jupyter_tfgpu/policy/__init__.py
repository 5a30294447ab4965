"""Per-notebook GPU policies. Nothing in this package knows about tornado."""

from .admin import AdminPolicy
from .model import CapExceeded, PolicyError, normalize_notebook_path, policy_schema, validate_policy
from .render import render_env
from .service import PolicyService
from .store import PolicyStore, StoreUnavailable

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

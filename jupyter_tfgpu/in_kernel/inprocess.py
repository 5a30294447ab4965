"""Apply a newly saved policy inside this kernel, when the frameworks still allow it.

The server sends, with this kernel's view, ``next_start``: the environment and the policy
document a (re)start of this kernel would get. If no framework has initialized its GPU devices
yet, that environment replaces this process's policy variables (read by the frameworks when they
initialize, and inherited by every process the kernel starts from now on) and the kernel
bootstrap (``tfgpu_bootstrap.apply_now``) applies the in-process knobs to any framework already
imported, or when it is imported. Otherwise nothing changes here and the outcome says, plainly,
that a restart is needed. ``TFGPU_POLICY`` is updated only when the whole policy took effect, so
it always tells what this process runs with.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from jupyter_tfgpu.in_kernel.policy_fields import requested, same_policy, setting_text
from jupyter_tfgpu.protocol import POLICY_ENV, REPORTING_FRAMEWORKS

LABELS = {"tensorflow": "TensorFlow", "torch": "PyTorch", "jax": "JAX"}
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
FLAG_LISTS = ("XLA_FLAGS",)
RESTART_HINT = "restart the kernel to apply it (Kernel > Restart Kernel)"


@dataclass
class ApplyOutcome:
    """What happened in this kernel after the policy was saved."""

    state: str  # "applied" | "unchanged" | "restart"
    message: str
    details: list[str] = field(default_factory=list)

    @property
    def restart_required(self) -> bool:
        """Whether this kernel needs a restart to run with the saved policy."""
        return self.state == "restart"


def _label(names: list[str]) -> str:
    return " and ".join(LABELS.get(n, n) for n in names)


def imported_frameworks() -> list[str]:
    """GPU frameworks this process has imported."""
    return [name for name in REPORTING_FRAMEWORKS if name in sys.modules]


def initialized_frameworks() -> list[str]:
    """GPU frameworks that have already set up their devices in this process (no side effects)."""
    found = []
    context = sys.modules.get("tensorflow.python.eager.context")
    ctx = getattr(context, "_context", None)  # the module global: context() would create it
    if ctx is not None and getattr(ctx, "_context_handle", None) is not None:
        found.append("tensorflow")
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():
            found.append("torch")
    except Exception:  # noqa: BLE001, S110 - a torch that cannot tell has not initialized
        pass
    backends = getattr(sys.modules.get("jax._src.xla_bridge"), "_backends", None)
    if isinstance(backends, dict) and backends:
        found.append("jax")
    return found


def running_policy() -> dict[str, Any] | None:
    """The policy document this process runs with (``TFGPU_POLICY``), if any."""
    try:
        document = json.loads(os.environ.get(POLICY_ENV) or "null")
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def runs_policy(document: dict[str, Any] | None) -> bool:
    """Whether this process already runs with ``document`` (every policy field equal)."""
    running = running_policy()
    return running is not None and document is not None and same_policy(running, document)


def restart_required(kernel: dict[str, Any] | None) -> bool:
    """Whether this kernel must restart to run with its notebook's policy (a kernel view from
    the server): the server compares with what the kernel started with; this process knows
    whether a change was applied in it since."""
    if not kernel:
        return False
    next_policy = (kernel.get("next_start") or {}).get("policy")
    running = running_policy()
    if next_policy is not None and running is not None:
        return not same_policy(running, next_policy)
    return bool(kernel.get("restart_required"))


def _bootstrap() -> Any:
    """The kernel bootstrap the provisioner put on PYTHONPATH, or None."""
    module = sys.modules.get("tfgpu_bootstrap")
    if module is None:
        try:
            import tfgpu_bootstrap as module  # type: ignore[import-not-found]
        except Exception:  # noqa: BLE001 - no bootstrap: the caller says restart
            return None
    return module


def apply_policy(next_start: dict[str, Any] | None) -> ApplyOutcome:
    """Make this process run with ``next_start`` if the frameworks allow it; say what happened."""
    if not next_start or not isinstance(next_start.get("policy"), dict):
        return ApplyOutcome(
            "restart", f"The server did not say how to apply it here: {RESTART_HINT}."
        )
    document, env = next_start["policy"], dict(next_start.get("env") or {})
    if runs_policy(document):
        return ApplyOutcome("unchanged", "This kernel already runs with this policy.")
    bootstrap = _bootstrap()
    if bootstrap is None:
        return ApplyOutcome(
            "restart", f"The jupyter-tfgpu bootstrap is not loaded in this kernel: {RESTART_HINT}."
        )
    touched = initialized_frameworks()
    if touched:
        return ApplyOutcome(
            "restart",
            f"{_label(touched)} already initialized the GPU in this kernel, so the policy cannot "
            f"take effect in it: {RESTART_HINT}.",
        )
    imported = imported_frameworks()
    details: list[str] = []
    blocked: list[str] = []
    running = requested(running_policy())
    if document.get("devices") == "auto":
        env.pop(VISIBLE_ENV, None)  # placement happens at a start, not here
        if running.get("devices") == "auto":
            document = {**document, **_placed(running_policy() or {})}
        else:
            blocked.append("devices: automatic placement picks GPUs when the kernel starts")
            # The bootstrap reads GPU lists only; this process keeps the GPUs it runs with.
            document = {**document, "devices": (running_policy() or {}).get("devices")}
    if imported and env.get(VISIBLE_ENV, os.environ.get(VISIBLE_ENV)) != os.environ.get(
        VISIBLE_ENV
    ):
        # CUDA reads it once, when a framework first looks for GPUs (TensorFlow does at import).
        env.pop(VISIBLE_ENV, None)
        blocked.append(f"devices: {_label(imported)} was imported before the change")
    _set_env(env)
    for framework in imported or ["tensorflow"]:
        result = bootstrap.apply_now(framework, document)
        if not imported:
            break  # no framework yet: apply_now only stored the policy for the import hook
        details.extend(_describe(framework, result, blocked))
    if blocked:
        return ApplyOutcome(
            "restart",
            f"Partly applied in this kernel; {'; '.join(blocked)}: {RESTART_HINT}.",
            details,
        )
    os.environ[POLICY_ENV] = json.dumps(document, separators=(",", ":"), sort_keys=True)
    if not imported:
        return ApplyOutcome(
            "applied",
            "Applied in this kernel: it takes effect when TensorFlow, PyTorch or JAX is imported.",
        )
    return ApplyOutcome(
        "applied", f"Applied in this kernel ({_label(imported)} not on the GPU yet).", details
    )


def tell_server(client: Any, outcome: ApplyOutcome) -> None:
    """After an in-process apply, let the server record it (no restart needed any more)."""
    if outcome.state != "applied" or client is None:
        return
    try:
        client.applied_here()
    except Exception:  # noqa: BLE001 - the policy is applied; only the server's view lags
        pass


def _placed(running: dict[str, Any]) -> dict[str, Any]:
    """The GPUs automatic placement gave this kernel at start, kept while devices stays "auto"."""
    keep = {"devices": running.get("devices"), "devices_requested": "auto"}
    if "placement" in running:
        keep["placement"] = running["placement"]
    return keep


def _set_env(env: dict[str, Any]) -> None:
    """Put the policy's variables in this process's environment (``None`` removes one)."""
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        elif name in FLAG_LISTS:
            # A list of flags the user may have set too: add the policy's, keep theirs.
            flags = os.environ.get(name, "").split()
            flags += [flag for flag in str(value).split() if flag not in flags]
            os.environ[name] = " ".join(flags)
        else:
            os.environ[name] = str(value)


def _describe(framework: str, result: dict[str, Any], blocked: list[str]) -> list[str]:
    """One line per setting of one framework's apply result; restart reasons go to ``blocked``."""
    label = LABELS[framework]
    lines = []
    for item in result.get("applied", []):
        lines.append(f"{label}: {setting_text(item)} applied")
    for item in result.get("pending", []):
        lines.append(f"{label}: {setting_text(item)} applies when CUDA initializes")
    for item in result.get("skipped", []):
        reason = str(item.get("reason") or "")
        lines.append(f"{label}: {setting_text(item)} skipped ({reason})")
        if "restart" in reason.lower():
            blocked.append(f"{label}: {item.get('setting')} needs a restart")
    for message in result.get("errors", []):
        blocked.append(f"{label}: {message}")
    return lines


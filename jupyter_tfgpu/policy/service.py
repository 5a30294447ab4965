"""Policies as the server uses them: validate, check caps, store, resolve, render for a launch."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..gpu import DeviceInfo
from .admin import AdminPolicy
from .placement import Placement
from .model import CapExceeded, PolicyError, normalize_notebook_path, validate_policy
from .render import encode, policy_document, render_env
from .store import PolicyStore


class PolicyService:
    """One per server: the store, the admin's rules, and what each kernel started with."""

    def __init__(
        self,
        store: PolicyStore,
        admin: AdminPolicy,
        devices: Callable[[], list[DeviceInfo]],
        root_dir: str,
        devices_known: Callable[[], bool] = lambda: True,
        log: logging.Logger | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.log = log or logging.getLogger(__name__)
        self.placement = placement
        self.store = store
        self.admin = admin
        self._devices = devices
        self._devices_known = devices_known
        self.root_dir = os.path.realpath(root_dir)
        # kernel id -> the policy document its process was started with
        self.applied: dict[str, dict[str, Any]] = {}
        self._applied_lock = threading.Lock()

    @property
    def devices(self) -> list[DeviceInfo]:
        """The server's GPUs (empty without a backend)."""
        return self._devices()

    # -- keys --------------------------------------------------------------------------------

    def key(self, path: str) -> str:
        """A notebook path from the API, normalized (raises PolicyError)."""
        return normalize_notebook_path(path)

    def key_for_session(self, session_name: str | None) -> str | None:
        """The key for a kernel's JPY_SESSION_NAME (an absolute path), if under the root."""
        if not session_name:
            return None
        path = Path(session_name)
        if not path.is_absolute():
            return normalize_notebook_path(session_name)
        try:
            relative = os.path.relpath(os.path.realpath(path), self.root_dir)
        except ValueError:
            return None
        if relative.startswith(".."):
            return None
        return normalize_notebook_path(relative)

    # -- policies ----------------------------------------------------------------------------

    def own(self, key: str) -> dict[str, Any] | None:
        """The notebook's own stored policy."""
        return self.store.get(key)

    def effective(self, key: str | None) -> dict[str, Any]:
        """Admin default, then the notebook's own, clamped by the caps."""
        own = self.store.get(key) if key else None
        if own is not None:
            try:
                own = validate_policy(own)
            except PolicyError as err:
                # A hand-edited store: never render a bad value into a kernel's environment.
                self.log.error("jupyter-tfgpu: ignoring the stored policy of %s: %s", key, err)
                own = None
        return self.admin.effective(own, self.devices)

    def set(self, key: str, data: Any) -> dict[str, Any]:
        """Validate and store a notebook's policy (PolicyError 400, CapExceeded 403)."""
        devices = self.devices if self._devices_known() else None
        policy = validate_policy(data, devices)
        self.admin.check(policy, self.devices)
        self.store.put(key, policy)
        return policy

    def reset(self, key: str) -> bool:
        """Remove a notebook's own policy (CapExceeded 403 when users may not set policies)."""
        if not self.admin.allow_user_policies:
            raise CapExceeded(
                "allow_user_policies", "the admin does not allow per-notebook policies"
            )
        return self.store.delete(key)

    def describe(self, key: str) -> dict[str, Any]:
        """What the API shows for one notebook."""
        return {"notebook": key, "policy": self.own(key), "effective": self.effective(key)}

    # -- kernel launches ---------------------------------------------------------------------

    def launch(
        self,
        kernel_id: str | None,
        session_name: str | None,
        inherited: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, str | None], dict[str, Any]]:
        """The environment for a kernel about to start, and the document it records.

        ``devices: "auto"`` is resolved here, by placement, into the GPUs this kernel gets.
        """
        key = self.key_for_session(session_name)
        effective = self.effective(key)
        placement = None
        if effective.get("devices") == "auto":
            placement = self._place(kernel_id, effective)
            effective = {**effective, "devices": placement["chosen"]}
        document = policy_document(
            effective, self.devices, notebook=key, kernel_id=kernel_id, started=time.time()
        )
        if placement is not None:
            document["devices_requested"] = "auto"
            document["placement"] = placement
        env = render_env(effective, self.devices, inherited)
        env["TFGPU_POLICY"] = encode(document)
        if kernel_id:
            with self._applied_lock:
                self.applied[kernel_id] = document
        return env, document

    def _place(self, kernel_id: str | None, effective: dict[str, Any]) -> dict[str, Any]:
        count = effective.get("gpu_count") or 1
        if self.placement is None or not self._devices_known():
            return {"strategy": None, "requested": count, "chosen": [],
                    "reason": "no GPU monitoring: nothing to place on"}
        return self.placement.choose(
            kernel_id or "",
            count,
            effective.get("memory_limit_mb"),
            allowed=self.admin.allowed_uuids(self.devices),
        )

    def applied_in_process(self, kernel_id: str, key: str | None) -> dict[str, Any]:
        """A kernel applied its notebook's current policy in-process (no restart).

        What is recorded is the server's own rendering of the current policy, never what the
        kernel claims; GPUs it was placed on at start stay as they were.
        """
        started = self.applied.get(kernel_id) or {}
        effective = self.effective(key)
        if effective.get("devices") == "auto" and started.get("devices_requested") == "auto":
            effective = {**effective, "devices": started.get("devices") or []}
        document = policy_document(effective, self.devices, notebook=key, kernel_id=kernel_id)
        for name in ("devices_requested", "placement"):
            if name in started and effective.get("devices") is not None:
                document[name] = started[name]
        document["started"] = started.get("started")
        document["applied_in_process"] = time.time()
        with self._applied_lock:
            self.applied[kernel_id] = document
        return document

    def forget_kernel(self, kernel_id: str) -> None:
        """A kernel is gone."""
        with self._applied_lock:
            self.applied.pop(kernel_id, None)
        if self.placement is not None:
            self.placement.release(kernel_id)

    def restart_required(self, kernel_id: str, key: str | None) -> bool:
        """Whether the kernel runs with a different policy than its notebook now has."""
        started = self.applied.get(kernel_id)
        if started is None:
            return False
        now = policy_document(self.effective(key), self.devices)
        was = {**started, "devices": started.get("devices_requested", started.get("devices"))}
        return any(was.get(name) != value for name, value in now.items())

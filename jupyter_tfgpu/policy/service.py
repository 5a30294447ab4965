"""Policies as the server uses them: validate, check caps, store, resolve, render for a launch."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.protocol import POLICY_ENV
from jupyter_tfgpu.policy.admin import AdminPolicy
from jupyter_tfgpu.policy.changes import PolicyChanges
from jupyter_tfgpu.policy.placement import Placement
from jupyter_tfgpu.policy.model import CapExceeded, PolicyError, empty_policy, validate_policy
from jupyter_tfgpu.policy.keys import NotebookKeys
from jupyter_tfgpu.policy.environment import (
    STARTING_CONTEXT_MB,
    ContextReserve,
    encode,
    render_env,
    visible_devices,
)
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.policy.store import PolicyStore


class PolicyService:
    """One per server: the store, the admin's rules, and the launches they render (the server's
    kernels keep them: ``server/kernels/launches.py``)."""

    def __init__(
        self,
        store: PolicyStore,
        admin: AdminPolicy,
        devices: Callable[[], list[DeviceInfo]],
        root_dir: str,
        devices_known: Callable[[], bool] = lambda: True,
        monitoring_reason: Callable[[], str | None] = lambda: None,
        log: logging.Logger | None = None,
        placement: Placement | None = None,
        context_reserve: Callable[[list[str] | None], ContextReserve] | None = None,
    ) -> None:
        self.log = log or logging.getLogger(__name__)
        self.placement = placement
        # GPUs (UUIDs; None: any) -> the room under a cap for the CUDA context on them
        self._context_reserve = context_reserve or (
            lambda gpus: ContextReserve(STARTING_CONTEXT_MB, "starting value")
        )
        self.store = store
        self.admin = admin
        # Every change to the stored policies, numbered (the stream pushes it to open views).
        self.changes = PolicyChanges()
        store.on_change = self.changes.record
        self._devices = devices
        self._devices_known = devices_known
        self._monitoring_reason = monitoring_reason
        # How a notebook is named: by the API, by a kernel's session, in the store.
        self.keys = NotebookKeys(root_dir)
        self._logged: set[tuple[str | None, str]] = set()

    @property
    def devices(self) -> list[DeviceInfo]:
        """The server's GPUs (empty without a backend)."""
        return self._devices()

    def set_admin(self, admin: AdminPolicy) -> None:
        """New admin defaults and caps (the caps file changed): every open view reads its
        policies again, as every effective policy may read differently now."""
        self.admin = admin
        if self.placement is not None:
            self.placement.strategy = admin.placement_strategy
        self.changes.start_over()

    # -- policies ----------------------------------------------------------------------------

    def own(self, key: str) -> dict[str, Any] | None:
        """The notebook's own stored policy."""
        key = self.keys.canonical(key)
        return self.store.get(key) if key else None

    def effective(self, key: str | None) -> dict[str, Any]:
        """Admin default, then the notebook's own, clamped by the caps."""
        own = self.own(key)
        if own is not None:
            try:
                own = validate_policy(own)
            except PolicyError as err:
                # A hand-edited store: never render a bad value into a kernel's environment.
                self._log_once(key, f"ignoring the stored policy of {key}: {err}")
                own = None
        return self.admin.effective(own, self.devices)

    def _log_once(self, key: str | None, message: str) -> None:
        """Log an error once per notebook and message: effective() runs several times a second."""
        if (key, message) in self._logged:
            return
        if len(self._logged) >= 1000:  # messages may name kernels: never grow without bound
            self._logged.clear()
        self._logged.add((key, message))
        self.log.error("jupyter-tfgpu: %s", message)

    def set(self, key: str, data: Any) -> dict[str, Any]:
        """Validate and store a notebook's policy (PolicyError, CapExceeded, StoreUnavailable)."""
        devices = self.devices if self._devices_known() else None
        policy = validate_policy(data, devices)
        self.admin.check(policy, self.devices)
        self.store.put(self.keys.key(key), policy)
        return policy

    def reset(self, key: str) -> bool:
        """Remove a notebook's own policy (CapExceeded when users may not set policies,
        StoreUnavailable when the store cannot be written)."""
        if not self.admin.allow_user_policies:
            raise CapExceeded(
                "allow_user_policies", "the admin does not allow per-notebook policies"
            )
        return self.store.delete(self.keys.key(key))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every stored notebook policy, by notebook."""
        return self.store.all()

    @property
    def problems(self) -> list[dict[str, Any]]:
        """The store's problems: files set aside as corrupt, why it cannot be read now."""
        return self.store.problems

    @property
    def default(self) -> dict[str, Any]:
        """The admin's default policy."""
        return self.admin.default

    def describe(self, key: str) -> dict[str, Any]:
        """What the API shows for one notebook, with the revision it is as new as."""
        revision = self.changes.revision  # read first: a change after it only costs a re-read
        return {
            "notebook": key,
            "policy": self.own(key),
            "effective": self.effective(key),
            "revision": revision,
        }

    # -- kernel launches ---------------------------------------------------------------------

    def launch(
        self,
        kernel_id: str | None,
        session_name: str | None,
        inherited: Mapping[str, str] | None = None,
        placed: Callable[[str, str], None] = lambda strategy, outcome: None,
    ) -> tuple[dict[str, str | None], Launch]:
        """The environment for a kernel about to start, and its launch.

        ``devices: "auto"`` is resolved here, by placement, into the GPUs this kernel gets;
        ``placed(strategy, outcome)`` is told of each placement decided.
        """
        key = self.keys.key_for_session(session_name)
        try:
            return self._launch(kernel_id, key, lambda: self.effective(key), inherited, placed)
        except Exception as err:  # noqa: BLE001 - no policy may stop a kernel from starting
            why = f"its notebook's policy could not be applied ({type(err).__name__}: {err})"
        refused = self.own(key) if kernel_id and key else None
        error = f"{why}; it started with the admin default policy"
        self._log_once(key, f"the kernel of {key or 'a session without a notebook'}: {error}")
        try:
            return self._launch(
                kernel_id,
                key,
                lambda: self.admin.effective(None, self.devices),
                inherited,
                placed,
                error=error,
                refused=refused,
            )
        except Exception as err:  # noqa: BLE001
            error = (
                f"{why}, nor the admin default ({type(err).__name__}: {err}); "
                "it started without a policy"
            )
        self._log_once(key, f"the kernel of {key or 'a session without a notebook'}: {error}")
        return self._launch(
            kernel_id, key, empty_policy, inherited, placed, error=error, refused=refused
        )

    def _launch(
        self,
        kernel_id: str | None,
        key: str | None,
        resolve: Callable[[], dict[str, Any]],
        inherited: Mapping[str, str] | None,
        placed: Callable[[str, str], None],
        **fallback: Any,
    ) -> tuple[dict[str, str | None], Launch]:
        """Resolve, place and render one policy; releases the placement if anything fails.
        ``fallback``: the launch's error and refused policy when it is not the notebook's."""
        try:
            effective = resolve()
            placement = None
            if effective.get("devices") == "auto":
                placement = self._place(kernel_id, effective, placed)
                effective = {**effective, "devices": placement["chosen"]}
            reserve = self.context_reserve(visible_devices(effective, self.devices))
            launch = Launch.render(
                effective,
                self.devices,
                reserve,
                notebook=key,
                kernel_id=kernel_id,
                started=time.time(),
                placement=placement,
                **fallback,
            )
            env = render_env(effective, self.devices, inherited, reserve)
            env[POLICY_ENV] = encode(launch.to_json())
        except Exception:
            if kernel_id and self.placement is not None:
                self.placement.release(kernel_id)
            raise
        return env, launch

    def _place(
        self,
        kernel_id: str | None,
        effective: dict[str, Any],
        placed: Callable[[str, str], None],
    ) -> dict[str, Any]:
        count = effective.get("gpu_count") or 1
        if self.placement is None or not self._devices_known():
            why = self._monitoring_reason()
            reason = f"no GPU monitoring ({why})" if why else "no GPU monitoring"
            decision = {"strategy": None, "requested": count, "chosen": [],
                        "reason": f"{reason}: this kernel runs on the CPU only"}
        else:
            decision = self.placement.choose(
                kernel_id or "",
                count,
                effective.get("memory_limit_mb"),
                allowed=self.admin.allowed_uuids(self.devices),
            )
        chosen = len(decision["chosen"])
        outcome = "placed" if chosen >= count else "partial" if chosen else "cpu_only"
        placed(decision["strategy"] or "none", outcome)
        return decision

    def context_reserve(self, gpus: list[str] | None) -> ContextReserve:
        """The room under a cap for the CUDA context on these GPUs (UUIDs; None: any of them);
        the starting value if it cannot be worked out (a launch must never fail on it)."""
        try:
            return self._context_reserve(gpus)
        except Exception as err:  # noqa: BLE001
            self._log_once(None, f"no measured CUDA context size ({type(err).__name__}: {err})")
            return ContextReserve(STARTING_CONTEXT_MB, "starting value")

    def _reserve_in(self, started: Launch | None, effective: dict[str, Any]) -> ContextReserve:
        """The context reserve on the GPUs a running kernel applies ``effective`` on: the ones
        it was placed on at start when the policy still says ``auto``."""
        if effective.get("devices") == "auto":
            return self.context_reserve(started.devices if started is not None else None)
        return self.context_reserve(visible_devices(effective, self.devices))

    def next_start(
        self, kernel_id: str, key: str | None, started: Launch | None
    ) -> dict[str, Any]:
        """What a running kernel (started with ``started``) gets to apply its notebook's current
        policy in-process: the environment and the launch document, with the framework limit a
        start would give it."""
        effective = self.effective(key)
        reserve = self._reserve_in(started, effective)
        launch = Launch.render(effective, self.devices, reserve, notebook=key, kernel_id=kernel_id)
        env = render_env(effective, self.devices, reserve=reserve)
        return {"env": env, "policy": launch.to_json()}

    def in_process(self, kernel_id: str, key: str | None, started: Launch | None) -> Launch:
        """The notebook's current policy rendered for a running kernel that started with
        ``started``, to apply in-process: GPUs it was placed on stay its GPUs while the policy
        still says "auto"."""
        effective = self.effective(key)
        placed = started is not None and started.placement is not None
        if effective.get("devices") == "auto" and placed:
            effective = {**effective, "devices": started.devices or []}
        reserve = self._reserve_in(started, effective)
        return Launch.render(effective, self.devices, reserve, notebook=key, kernel_id=kernel_id)

    def rendered(self, key: str | None) -> Launch:
        """The notebook's effective policy now, its GPUs named as a launch names them (no
        kernel, no framework limit): what a kernel's launch is compared with."""
        return Launch.render(self.effective(key), self.devices)

    def release(self, kernel_id: str) -> None:
        """A kernel is gone: the GPUs placement reserved for it are free again."""
        if self.placement is not None:
            self.placement.release(kernel_id)

"""Admin defaults and caps, and the effective policy: default, then notebook's, then caps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.policy.model import CapExceeded, empty_policy, policy_field_names, resolve_device

THREAD_FIELDS = ("intra_op_threads", "inter_op_threads")


def _setting(name: str, **kwargs: Any) -> Any:
    """A field whose admin setting (``TFGPU.<name>``, and its name in ``GET config``) differs."""
    return field(metadata={"setting": name}, **kwargs)


@dataclass(frozen=True)
class AdminPolicy:
    """What the operator set in the server's config (traits of ``TFGPU``).

    Each field is one setting, under its own name unless its metadata names the setting:
    ``from_settings`` and ``to_json`` read this list, so a new cap is a field here and a trait.
    """

    default: dict[str, Any] = _setting("default_policy", default_factory=dict)
    max_memory_mb: int | None = None
    allowed_devices: tuple[int | str, ...] | None = None
    force_memory_growth: bool = False
    allow_user_policies: bool = True
    forced: dict[str, Any] = _setting("forced_policy", default_factory=dict)
    max_threads: int | None = None
    placement_strategy: str = "most_free_memory"

    @classmethod
    def settings(cls) -> dict[str, str]:
        """Setting name -> field name, in the order ``GET config`` shows them."""
        return {f.metadata.get("setting", f.name): f.name for f in fields(cls)}

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> AdminPolicy:
        """The admin policy from setting values (``TFGPU`` traits, or any mapping of them)."""
        kwargs = {name: values[setting] for setting, name in cls.settings().items()}
        if kwargs["allowed_devices"] is not None:
            kwargs["allowed_devices"] = tuple(kwargs["allowed_devices"])
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``GET config``."""
        shown = {setting: getattr(self, name) for setting, name in self.settings().items()}
        if self.allowed_devices is not None:
            shown["allowed_devices"] = list(self.allowed_devices)
        return shown

    # -- checks on what a user asks for ------------------------------------------------------

    def check(self, own: dict[str, Any], devices: list[DeviceInfo]) -> None:
        """Refuse a notebook policy that goes beyond a cap (raises ``CapExceeded``)."""
        if not self.allow_user_policies:
            raise CapExceeded("allow_user_policies", "the admin does not allow per-notebook policies")
        limit = own.get("memory_limit_mb")
        if self.max_memory_mb is not None and limit is not None and limit > self.max_memory_mb:
            raise CapExceeded(
                "max_memory_mb",
                f"memory_limit_mb {limit} is over the admin's limit of {self.max_memory_mb} MiB",
            )
        if self.force_memory_growth and own.get("memory_growth") is False:
            raise CapExceeded("force_memory_growth", "the admin requires memory growth on")
        for name, value in self.forced.items():
            if own.get(name) is not None and own[name] != value:
                raise CapExceeded(
                    "forced_policy", f"{name} is fixed to {value!r} by the admin"
                )
        for name in THREAD_FIELDS:
            asked = own.get(name)
            if self.max_threads is not None and asked is not None and asked > self.max_threads:
                raise CapExceeded(
                    "max_threads", f"{name} {asked} is over the admin's limit of {self.max_threads}"
                )
        if own.get("devices") == "auto":
            count = own.get("gpu_count") or 1
            if self.allowed_devices is not None and count > len(self.allowed_devices):
                raise CapExceeded(
                    "allowed_devices",
                    f"gpu_count {count} is more GPUs than the admin allows "
                    f"({len(self.allowed_devices)})",
                )
        elif self.allowed_devices is not None and own.get("devices"):
            allowed = self._allowed_uuids(devices)
            for token in own["devices"]:
                if self._canonical(token, devices) not in allowed:
                    raise CapExceeded(
                        "allowed_devices",
                        f"GPU {token!r} is not among the GPUs the admin allows "
                        f"({', '.join(map(str, self.allowed_devices))})",
                    )

    def _canonical(self, token: int | str, devices: list[DeviceInfo]) -> int | str:
        return resolve_device(token, devices) or token

    def allowed_uuids(self, devices: list[DeviceInfo]) -> set[str] | None:
        """UUIDs kernels may use (GPUs and their MIG slices); None when every GPU is allowed."""
        if self.allowed_devices is None:
            return None
        return {str(u) for u in self._allowed_uuids(devices)}

    def _allowed_uuids(self, devices: list[DeviceInfo]) -> set[int | str]:
        allowed: set[int | str] = set()
        for token in self.allowed_devices or ():
            allowed.add(self._canonical(token, devices))
            # A whole GPU allowed allows its MIG slices too.
            for info in devices:
                if token in (info.index, info.uuid):
                    allowed.update(m.uuid for m in info.mig_instances)
        return allowed

    # -- the effective policy ----------------------------------------------------------------

    def effective(self, own: dict[str, Any] | None, devices: list[DeviceInfo]) -> dict[str, Any]:
        """Default, then the notebook's own fields, then clamped by the caps.

        ``sources`` says where each field's value came from: "default", "notebook" or "cap".
        """
        policy = empty_policy()
        sources: dict[str, str | None] = dict.fromkeys(policy_field_names())
        for name, value in self.default.items():
            if value is not None:
                policy[name], sources[name] = value, "default"
        if own and self.allow_user_policies:
            for name, value in own.items():
                if value is not None:
                    policy[name], sources[name] = value, "notebook"
        if self.force_memory_growth and policy["memory_growth"] is not True:
            policy["memory_growth"], sources["memory_growth"] = True, "cap"
        for name, value in self.forced.items():
            if name in policy and policy[name] != value:
                policy[name], sources[name] = value, "cap"
        for name in THREAD_FIELDS:
            threads = policy.get(name)
            if self.max_threads is not None and threads is not None and threads > self.max_threads:
                policy[name], sources[name] = self.max_threads, "cap"
        limit = policy["memory_limit_mb"]
        if self.max_memory_mb is not None and (limit is None or limit > self.max_memory_mb):
            policy["memory_limit_mb"], sources["memory_limit_mb"] = self.max_memory_mb, "cap"
        if self.allowed_devices is not None and policy["devices"] != "auto":
            allowed = self._allowed_uuids(devices)
            if policy["devices"] is None:
                policy["devices"] = [self._canonical(t, devices) for t in self.allowed_devices]
                sources["devices"] = "cap"
            else:
                asked = policy["devices"]
                kept = [t for t in asked if self._canonical(t, devices) in allowed]
                if asked and not kept:
                    # None of the GPUs asked for is allowed (any more): the allowed ones, not
                    # a silent fall back to CPU only.
                    kept = [self._canonical(t, devices) for t in self.allowed_devices]
                if kept != asked:
                    policy["devices"], sources["devices"] = kept, "cap"
        return {**policy, "sources": sources}

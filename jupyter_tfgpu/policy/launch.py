"""The launch: what a kernel started with, one frozen type from the policy's rendering to the API.

A kernel's launch is its notebook's effective policy as rendered for its process (the GPUs named
as CUDA sees them), the framework limit under its cap, where "devices: auto" placed it, why its
notebook's policy could not be applied, and when it started (or applied a policy in-process).
It is made once per start (``Launch.render``), kept per kernel by the server, and read by its
attributes. ``to_json()`` is both the ``applied`` object of ``GET kernels/{id}`` (the OpenAPI
spec) and the ``TFGPU_POLICY`` document the kernel's bootstrap reads. Each part with JSON of its
own (``FrameworkLimit``, ``CapEnforcement``: how the cap is enforced) is a typed member that
writes its own keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement
from jupyter_tfgpu.policy.environment import (
    ContextReserve,
    framework_limit,
    limit_note,
    visible_devices,
)
from jupyter_tfgpu.policy.model import policy_field_names


@dataclass(frozen=True)
class FrameworkLimit:
    """What the frameworks get under a cap on GPUs: the cap less the context reserve of those
    GPUs, or the cap itself when that leaves no room (``note`` then says so)."""

    mb: int
    reserve: ContextReserve
    note: str | None = None

    @classmethod
    def of(cls, policy: Mapping[str, Any], reserve: ContextReserve | None) -> FrameworkLimit | None:
        """The limit for a policy on GPUs with this reserve; None without a cap, a reserve, or
        GPUs."""
        limit = framework_limit(policy, reserve)
        if limit is None or reserve is None:
            return None
        return cls(limit, reserve, limit_note(int(policy["memory_limit_mb"]), reserve))

    def to_json(self) -> dict[str, Any]:
        """The launch document's keys for it."""
        document = {
            "framework_limit_mb": self.mb,
            "context_reserve_mb": self.reserve.mb,
            "context_reserve_source": self.reserve.source,
            "context_reserve_measured_on": self.reserve.measured_on,
        }
        if self.note:
            document["memory_limit_note"] = self.note
        return document


@dataclass(frozen=True)
class Launch:
    """What a kernel started with (or applied in-process since), as rendered by the server."""

    # Every field of the policy schema; devices as CUDA sees them (UUIDs where known), or
    # "auto" in a rendering that was not placed
    fields: Mapping[str, Any]
    notebook: str | None = None
    kernel_id: str | None = None
    started: float | None = None  # when its process was started (seconds since the epoch)
    framework_limit: FrameworkLimit | None = None  # with a cap on GPUs only
    # How "devices": "auto" was placed at start: strategy, requested, chosen, reason
    placement: Mapping[str, Any] | None = None
    error: str | None = None  # why the notebook's own policy could not be applied at start
    # The notebook's own policy when it could not be applied (not in the JSON: it tells whether
    # a restart may apply the notebook's policy now)
    refused: Mapping[str, Any] | None = None
    in_process_at: float | None = None  # when the kernel applied its policy in-process
    # How its cap is enforced, per GPU; decided by the server's hard-caps mechanism as the
    # kernel starts (None in a rendering no kernel started with)
    enforcement: CapEnforcement | None = None

    @classmethod
    def render(
        cls,
        policy: Mapping[str, Any],
        devices: list[DeviceInfo],
        reserve: ContextReserve | None = None,
        **context: Any,
    ) -> Launch:
        """An effective policy rendered for a kernel's process on the server's GPUs; with
        ``reserve`` and a cap on GPUs, with the framework limit it leaves. ``context`` sets the
        other members (notebook, kernel_id, started, placement, error, refused)."""
        fields = {name: policy.get(name) for name in policy_field_names()}
        if policy.get("devices") != "auto":
            fields["devices"] = visible_devices(policy, devices)
        placement = context.pop("placement", None)
        return cls(
            MappingProxyType(fields),
            framework_limit=FrameworkLimit.of(policy, reserve),
            placement=MappingProxyType(placement) if placement is not None else None,
            **context,
        )

    @property
    def devices(self) -> Any:
        """The policy's devices as rendered: UUIDs (or indices), [] for the CPU only, None for
        any GPU, "auto" in a rendering that was not placed."""
        return self.fields.get("devices")

    @property
    def memory_limit_mb(self) -> int | None:
        """The cap, per GPU, as NVML shows the kernel's processes; None without one."""
        return self.fields.get("memory_limit_mb")

    @property
    def gpus(self) -> list[str] | None:
        """The GPUs the kernel may use, as its start named them (UUIDs, or indices where no UUID
        was known); None when it may use any (no ``devices`` in its policy)."""
        devices = self.devices
        if not isinstance(devices, list):
            return None
        return [str(device) for device in devices]

    @property
    def context_reserve_mb(self) -> int | None:
        """The room its framework limit left under the cap for the CUDA context; None without
        a framework limit."""
        return self.framework_limit.reserve.mb if self.framework_limit is not None else None

    def restart_required(self, now: Launch, own: Mapping[str, Any] | None) -> bool:
        """Whether the kernel runs with another policy than ``now``, its notebook's effective
        policy rendered now; ``own`` is the notebook's own policy now.

        A kernel that started with a fallback (``error``) would fall back again on a restart,
        unless the notebook's own policy changed since (then it may apply). GPUs placed by
        "auto" are compared as "auto".
        """
        if self.error:
            return own != self.refused
        was = {**self.fields, "devices": "auto" if self.placement is not None else self.devices}
        return any(was.get(name) != value for name, value in now.fields.items())

    def applied_in_process(self, now: Launch, at: float) -> Launch:
        """What the kernel runs with once it applied ``now`` (its notebook's policy rendered for
        it) in-process at ``at``: its start time stays, and so does its placement while ``now``
        names GPUs. What is kept is the server's rendering, never what the kernel claims."""
        keep = self.placement if now.devices is not None else None
        return replace(now, started=self.started, placement=keep, in_process_at=at)

    def to_json(self) -> dict[str, Any]:
        """The launch document: ``applied`` in the API, ``TFGPU_POLICY`` in the kernel."""
        # The keys in the order the API has always sent them.
        document = dict(self.fields)
        if self.framework_limit is not None:
            document.update(self.framework_limit.to_json())
        document["notebook"] = self.notebook
        document["kernel_id"] = self.kernel_id
        if self.started is not None and self.in_process_at is None:
            document["started"] = self.started
        if self.placement is not None:
            document["devices_requested"] = "auto"
            document["placement"] = dict(self.placement)
        if self.in_process_at is not None:
            document["started"] = self.started
            document["applied_in_process"] = self.in_process_at
        if self.error is not None:
            document["error"] = self.error
        if self.enforcement is not None:
            document["enforcement"] = self.enforcement.to_json()
        return document

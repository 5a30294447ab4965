"""What the sampler knows of one GPU between rounds: its facts, each group's last reading and
its errors, its process list, and whether it is lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.server.sampling.groups import SamplingGroup
from jupyter_tfgpu.server.sampling.process_list import ProcessList


@dataclass
class GpuState:
    """What the sampler knows of one GPU between rounds: its facts, its groups' last readings
    and their errors, and whether it is lost."""

    info: DeviceInfo
    # Group name -> its last reading; a group that failed as a whole has none (its fields null).
    readings: dict[str, Any] = field(default_factory=dict)
    # The last reading of the group kept when it fails (``stale_when_failed``: the processes).
    processes: ProcessList = field(default_factory=ProcessList)
    lost: bool = False
    lost_reason: str | None = None
    retry_at: float | None = None  # when a lost GPU is opened again; None: from the next round
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> field -> reason

    @classmethod
    def opened(cls, info: DeviceInfo) -> GpuState:
        """A GPU as the backend's open found it (lost when it could not be opened)."""
        if not info.lost:
            return cls(info)
        reason = info.lost_reason or "the device could not be opened"
        return cls(info, lost=True, lost_reason=reason)

    def took(self, group: SamplingGroup, reading: Any, now: float) -> Mapping[str, str]:
        """A reading of the group that answered: it replaces the group's last one whole (a part
        it no longer has, NVLink on a GPU back without links, is gone), and its errors the
        last ones (a field that answers again loses its reason). Returns those errors."""
        if group.stale_when_failed:
            self.processes.took(reading, now)
            self.errors.pop(group.name, None)
            return {}
        self.readings[group.name] = reading
        self.errors[group.name] = dict(reading.errors)
        return reading.errors

    def failed(self, group: SamplingGroup, reason: str, now: float, interval: float) -> None:
        """A read of the group that failed as a whole: its fields are null with the reason, not
        stale, but for a group whose absence would mislead (the process list: "no processes"),
        kept marked stale; ``interval`` is the group's."""
        self.readings.pop(group.name, None)
        if group.stale_when_failed:
            self.processes.failed(reason, now, interval)
        self.errors[group.name] = {key: reason for key in group.fields}

    def went_lost(self, reason: str, now: float, retry_at: float, interval: float) -> None:
        """The GPU stopped answering: ``lost_reason`` says it all; opened again at ``retry_at``;
        ``interval`` is the process list's."""
        self.lost, self.lost_reason = True, reason
        self.errors = {}
        self.retry_at = retry_at
        self.lost_round(now, interval)

    def lost_round(self, now: float, interval: float) -> None:
        """A round of the GPU lost: its process list is not this round's either (and ages like a
        failed read); ``interval`` is the process list's."""
        self.processes.failed(f"the GPU is lost: {self.lost_reason}", now, interval)

"""The contract every GPU backend meets; the sampler only talks to this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from jupyter_tfgpu.gpu.group_readings import FastReading, InterconnectReading, SlowReading
    from jupyter_tfgpu.gpu.readings import ProcessReading

# GPU memory is counted in bytes on the server side; caps and policies are in MiB. Defined once
# for the server side (the kernel side has its own, in_kernel/units.py).
MiB = 2**20
GiB = 2**30


class BackendUnavailable(Exception):
    """The backend cannot run here; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GpuLost(Exception):
    """One GPU stopped answering (fell off the bus, or the driver reports it unknown)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"GPU {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class MigInstance:
    """One MIG slice of a GPU, as read when the backend opens."""

    index: int
    uuid: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON form used in the REST contract."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "gpu_instance_id": self.gpu_instance_id,
            "compute_instance_id": self.compute_instance_id,
            "memory_total": self.memory_total,
        }


@dataclass(frozen=True)
class DeviceInfo:
    """Facts about one GPU, read when it is opened (its MIG instances also when they change)."""

    index: int
    uuid: str
    name: str
    memory_total: int | None
    power_limit: float | None = None
    max_clocks: dict[str, int | None] = field(default_factory=dict)
    mig_mode: bool | None = None
    mig_instances: tuple[MigInstance, ...] = ()
    lost: bool = False  # the device could not be opened (yet): ``reopen`` tries again
    lost_reason: str | None = None  # why it could not be opened
    nvlink_links: int = 0  # NVLink links the GPU has (0: none)
    nvlink_reason: str | None = None  # why there are no NVLink figures, when there are none


class Backend(Protocol):
    """What the sampler needs from a source of GPU readings.

    Readings come in groups with very different costs, so the sampler can call each group on
    its own cadence and time it (``server/sampling/groups.py`` names each group's method). Each
    ``read_*`` returns that group's typed reading (``gpu/group_readings.py``; ``None`` for a field
    the GPU does not support) and raises ``GpuLost`` when that GPU stopped answering. A field
    whose query failed otherwise (a driver timeout, say) is ``None`` too, with the reason in the
    reading's ``errors``. Any other exception fails the whole group; the sampler nulls it with
    the reason and reads it again.
    """

    name: str
    simulated: bool

    def open(self) -> list[DeviceInfo]:
        """Start the backend and read each GPU's facts on its own.

        Raise ``BackendUnavailable`` with the reason only when the library or the number of
        GPUs cannot be had (the sampler survives any other exception as well, and retries the
        open later). A GPU whose facts cannot be read, for any reason, is a ``DeviceInfo`` with
        ``lost`` and ``lost_reason``; the other GPUs are read from the start.
        """

    def reopen(self, index: int) -> DeviceInfo:
        """Read one GPU's facts again (a GPU not opened, or lost); still failing: lost, why."""

    def device_info(self, index: int) -> DeviceInfo:
        """The GPU's facts as the backend knows them now, without a driver call.

        They change after ``reopen``, and when a reading finds that they did (MIG instances
        made or destroyed); the sampler takes them again after each reading.
        """

    def versions(self) -> dict[str, str | None]:
        """Driver, library and CUDA versions, where known."""

    def read_fast(self, index: int) -> FastReading:
        """Cheap fields read every interval: memory, utilization (and MIG memory)."""

    def read_slow(self, index: int) -> SlowReading:
        """Fields that change slowly: temperature, power, fan, clocks."""

    def read_processes(self, index: int) -> tuple[ProcessReading, ...]:
        """Processes on the GPU: PID, used memory (bytes or None), type, MIG slot, utilization."""

    def read_pcie(self, index: int) -> InterconnectReading:
        """PCIe throughput in bytes/s (and NVLink's); slow (about 20 ms a call)."""

    def close(self) -> None:
        """Release the library; safe to call twice."""

"""What a backend's ``read_*`` returns for one GPU: a typed, frozen reading per sampling group.

A reading holds its group's fields (``None`` for a field the GPU does not support, or whose
query failed) and, in ``errors``, why each failed one is null: field path (``"temperature"``,
``"power.draw"``, ``"mig.instances.3.memory"``) -> reason. The sampler keeps each group's last
reading and assembles the snapshot's ``GpuReading`` from them and the GPU's facts.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple

from jupyter_tfgpu.gpu.readings import (
    MemoryReading,
    NvlinkReading,
    PcieReading,
    PowerReading,
    UtilizationReading,
)

# Field path -> why that field is null.
FieldErrors = Mapping[str, str]
NO_ERRORS: FieldErrors = MappingProxyType({})
NO_MIG_MEMORY: Mapping[int, MemoryReading | None] = MappingProxyType({})


class FastReading(NamedTuple):
    """Memory and utilization, read every interval; on a MIG GPU, each instance's memory too."""

    memory: MemoryReading  # every figure None where memory could not be read
    utilization: UtilizationReading
    mig_memory: Mapping[int, MemoryReading | None] = NO_MIG_MEMORY  # MIG slot -> its memory
    errors: FieldErrors = NO_ERRORS


class ClockSpeeds(NamedTuple):
    """Current clocks, MHz (their maxima are facts of the GPU: ``DeviceInfo.max_clocks``)."""

    sm: int | None
    memory: int | None


class SlowReading(NamedTuple):
    """Fields that change slowly: temperature (C), power (W), fan (%), clocks."""

    temperature: int | None
    power: PowerReading
    fan: int | None
    clocks: ClockSpeeds
    errors: FieldErrors = NO_ERRORS


class InterconnectReading(NamedTuple):
    """PCIe throughput, and NVLink's where the GPU has links; slow (about 20 ms a call)."""

    pcie: PcieReading
    nvlink: NvlinkReading | None = None  # None: the GPU has no NVLink links
    errors: FieldErrors = NO_ERRORS

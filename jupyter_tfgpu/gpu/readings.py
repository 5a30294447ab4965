"""Typed, frozen readings of one GPU, as the sampler assembles them; JSON only in ``to_json``.

Each ``to_json`` gives the REST contract's dict, keys in the contract's order (the snapshot's
JSON text is made from it). ``from_json`` reads such a dict back (tests, hand-made rows), a
missing key read as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from jupyter_tfgpu.gpu.backend import MigInstance


class MemoryReading(NamedTuple):
    """Bytes: ``reserved`` is the driver's share, where memory info v2 reports it."""

    total: int | None
    used: int | None
    free: int | None
    reserved: int | None = None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"total": self.total, "used": self.used, "free": self.free, "reserved": self.reserved}

    @classmethod
    def from_json(cls, row: Mapping[str, Any] | None) -> MemoryReading | None:
        """From a contract dict; None stays None."""
        if row is None:
            return None
        return cls(row.get("total"), row.get("used"), row.get("free"), row.get("reserved"))


class UtilizationReading(NamedTuple):
    """Percent busy: the GPU's cores and its memory controller."""

    gpu: int | None
    memory: int | None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"gpu": self.gpu, "memory": self.memory}


class PowerReading(NamedTuple):
    """Watts drawn and the enforced limit."""

    draw: float | None
    limit: float | None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"draw": self.draw, "limit": self.limit}


class ClockReading(NamedTuple):
    """Current and maximum clocks, MHz."""

    sm: int | None
    memory: int | None
    sm_max: int | None
    memory_max: int | None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "sm": self.sm,
            "memory": self.memory,
            "sm_max": self.sm_max,
            "memory_max": self.memory_max,
        }


class PcieReading(NamedTuple):
    """PCIe throughput, bytes/s."""

    tx: int | None
    rx: int | None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"tx": self.tx, "rx": self.rx}


class NvlinkReading(NamedTuple):
    """NVLink: links the GPU has, how many are active, data throughput over all of them."""

    links: int = 0
    active: int | None = None
    tx: int | None = None  # bytes/s, while someone watches the interconnect
    rx: int | None = None
    tx_total: int | None = None  # bytes, summed per link; never decreases (gpu/nvlink.py)
    rx_total: int | None = None
    reason: str | None = None  # why there are no figures, when the GPU has no NVLink

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return self._asdict()

    @classmethod
    def from_json(cls, row: Mapping[str, Any] | None) -> NvlinkReading:
        """From the API's form; missing members read as unknown."""
        row = row or {}
        return cls(*(row.get(name, default) for name, default in cls._field_defaults.items()))


class ProcessUtilization(NamedTuple):
    """Percent of the GPU one process keeps busy."""

    sm: int | None
    memory: int | None

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"sm": self.sm, "memory": self.memory}


class ProcessReading(NamedTuple):
    """One process on a GPU, and the kernel it belongs to (set by attribution).

    A NamedTuple, not a dataclass: one is made per GPU process per round, twice when
    attributed, and a tuple is the cheapest immutable thing to make.
    """

    pid: int
    used_memory: int | None = None  # bytes; None when NVML has no figure
    type: str | None = None  # "compute", "graphics" or "compute+graphics"
    mig: int | None = None  # the MIG instance's index, if any
    utilization: ProcessUtilization | None = None
    kernel_id: str | None = None
    notebook: str | None = None
    attributed_by: str | None = None  # "pid" or "kernel_report"
    # Under NVIDIA MPS: "server" (the MPS server, which NVML's compute list names in place of
    # its clients) or "client" (a process NVML's MPS list names); None otherwise
    mps: str | None = None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> ProcessReading:
        """From the API's form (``pid``, ``used_memory``, ``type``, ``mig``, ...)."""
        util = row.get("utilization")
        return cls(
            row["pid"],
            row.get("used_memory"),
            row.get("type"),
            row.get("mig"),
            None if util is None else ProcessUtilization(util.get("sm"), util.get("memory")),
            row.get("kernel_id"),
            row.get("notebook"),
            row.get("attributed_by"),
            row.get("mps"),
        )

    def owned_by(self, kernel_id: str, notebook: str | None, how: str) -> ProcessReading:
        """A copy that names its kernel (``how``: "pid" or "kernel_report")."""
        return ProcessReading(
            self.pid, self.used_memory, self.type, self.mig, self.utilization,
            kernel_id, notebook, how, self.mps,
        )

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        util = self.utilization
        row = {
            "kernel_id": self.kernel_id,
            "notebook": self.notebook,
            "attributed_by": self.attributed_by,
            "pid": self.pid,
            "used_memory": self.used_memory,
            "type": self.type,
            "mig": self.mig,
            "utilization": None if util is None else util.to_json(),
        }
        if self.mps is not None:  # only under MPS: every other row reads as it always did
            row["mps"] = self.mps
        return row


@dataclass(frozen=True, slots=True)
class MigInstanceReading:
    """One MIG slice: its static facts and its memory now."""

    instance: MigInstance
    memory: MemoryReading | None = None

    @property
    def index(self) -> int:
        """The slot of the instance on its GPU."""
        return self.instance.index

    @property
    def uuid(self) -> str:
        """The instance's MIG UUID."""
        return self.instance.uuid

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        memory = self.memory
        return {**self.instance.to_json(), "memory": None if memory is None else memory.to_json()}


@dataclass(frozen=True, slots=True)
class MigReading:
    """A GPU's MIG mode and its slices."""

    enabled: bool
    instances: tuple[MigInstanceReading, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """As the API shows it."""
        return {"enabled": self.enabled, "instances": [i.to_json() for i in self.instances]}


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU in one snapshot; a lost GPU is a reading that says so."""

    index: int
    uuid: str
    name: str | None = None
    lost: bool = False
    lost_reason: str | None = None
    errors: Mapping[str, str] = field(default_factory=dict)  # field path -> why it is null
    memory: MemoryReading = MemoryReading(None, None, None)
    utilization: UtilizationReading = UtilizationReading(None, None)
    temperature: int | None = None
    power: PowerReading = PowerReading(None, None)
    fan: int | None = None
    clocks: ClockReading = ClockReading(None, None, None, None)
    pcie: PcieReading = PcieReading(None, None)
    nvlink: NvlinkReading = NvlinkReading()
    mig: MigReading | None = None
    processes: tuple[ProcessReading, ...] = ()
    # Why ``processes`` is not this round's list (its read failed: the last list is kept, or
    # none is left); None when the list is fresh. Unknown is not "no processes".
    processes_stale: str | None = None

    def keys(self) -> frozenset[str]:
        """Its UUID, its index as a string and its MIG instances' UUIDs (see ``gpu.keys``)."""
        instances = self.mig.instances if self.mig is not None else ()
        return frozenset({self.uuid, str(self.index)} | {m.uuid for m in instances})

    def to_json(self) -> dict[str, Any]:
        """As the API shows it (the row of ``GET gpus``)."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "lost": self.lost,
            "lost_reason": self.lost_reason,
            "errors": dict(self.errors),
            "memory": self.memory.to_json(),
            "utilization": self.utilization.to_json(),
            "temperature": self.temperature,
            "power": self.power.to_json(),
            "fan": self.fan,
            "clocks": self.clocks.to_json(),
            "pcie": self.pcie.to_json(),
            "nvlink": self.nvlink.to_json(),
            "mig": None if self.mig is None else self.mig.to_json(),
            "processes": [p.to_json() for p in self.processes],
            "processes_stale": self.processes_stale,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> GpuReading:
        """From a ``GET gpus`` row; what it leaves out reads as unknown."""
        mig = row.get("mig")
        memory = MemoryReading.from_json(row.get("memory")) or MemoryReading(None, None, None)
        util = row.get("utilization") or {}
        power = row.get("power") or {}
        clocks = row.get("clocks") or {}
        pcie = row.get("pcie") or {}
        return cls(
            index=row["index"],
            uuid=row["uuid"],
            name=row.get("name"),
            lost=bool(row.get("lost")),
            lost_reason=row.get("lost_reason"),
            errors=dict(row.get("errors") or {}),
            memory=memory,
            utilization=UtilizationReading(util.get("gpu"), util.get("memory")),
            temperature=row.get("temperature"),
            power=PowerReading(power.get("draw"), power.get("limit")),
            fan=row.get("fan"),
            clocks=ClockReading(
                clocks.get("sm"), clocks.get("memory"), clocks.get("sm_max"), clocks.get("memory_max")
            ),
            pcie=PcieReading(pcie.get("tx"), pcie.get("rx")),
            nvlink=NvlinkReading.from_json(row.get("nvlink")),
            mig=None if mig is None else MigReading(
                bool(mig.get("enabled")),
                tuple(
                    MigInstanceReading(
                        MigInstance(
                            inst["index"] if "index" in inst else n,
                            inst["uuid"],
                            inst.get("gpu_instance_id"),
                            inst.get("compute_instance_id"),
                            inst.get("memory_total"),
                        ),
                        MemoryReading.from_json(inst.get("memory")),
                    )
                    for n, inst in enumerate(mig.get("instances") or ())
                ),
            ),
            processes=tuple(ProcessReading.from_json(p) for p in row.get("processes") or ()),
            processes_stale=row.get("processes_stale"),
        )

"""Assembling the readings into a snapshot: each GPU's groups' last readings and its facts
become its ``GpuReading``; annotators (attribution) fill in the owners."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jupyter_tfgpu.gpu.group_readings import FastReading, InterconnectReading, SlowReading
from jupyter_tfgpu.gpu.readings import (
    ClockReading,
    GpuReading,
    MemoryReading,
    MigInstanceReading,
    MigReading,
    NvlinkReading,
    PcieReading,
    PowerReading,
    UtilizationReading,
)
from jupyter_tfgpu.server.sampling.gpu_state import GpuState
from jupyter_tfgpu.server.sampling.groups import BY_NAME, FAST, PCIE, SLOW

Subscriber = Callable[["Snapshot"], None]
# Turns a round's readings into the ones published (attribution fills in the owners).
Annotator = Callable[[tuple[GpuReading, ...]], "Sequence[GpuReading] | None"]


@dataclass
class Snapshot:
    """One sample of every GPU, typed, and its JSON text (``GET gpus``) made once."""

    timestamp: float | None
    simulated: bool
    gpus: tuple[GpuReading, ...] = ()
    text: str = ""
    taken: float = 0.0
    # How often memory and utilization are read now, and why less often than configured.
    cadence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """As ``GET gpus`` serves it."""
        out: dict[str, Any] = {
            "timestamp": self.timestamp,
            "simulated": self.simulated,
            "gpus": [gpu.to_json() for gpu in self.gpus],
        }
        if self.cadence is not None:
            out["cadence"] = self.cadence
        return out


def gpu_reading(gpu: GpuState, watched: bool) -> GpuReading:
    """One GPU's reading for a snapshot, from its groups' last readings and its facts; a group
    read only while watched (the interconnect) shows its figures only while ``watched``."""
    info = gpu.info
    fast: FastReading | None = gpu.readings.get(FAST.name)
    slow: SlowReading | None = gpu.readings.get(SLOW.name)
    link: InterconnectReading | None = gpu.readings.get(PCIE.name)
    mig = None
    if info.mig_mode is not None:
        mig_memory = fast.mig_memory if fast is not None else {}
        mig = MigReading(
            info.mig_mode,
            tuple(
                MigInstanceReading(inst, mig_memory.get(inst.index))
                for inst in info.mig_instances
            ),
        )
    nvlink = (link.nvlink if link is not None else None) or NvlinkReading()
    if not watched:
        # Rates only while someone watches; the counters' last reading stays valid.
        nvlink = nvlink._replace(active=None, tx=None, rx=None)
    return GpuReading(
        index=info.index,
        uuid=info.uuid,
        name=info.name,
        lost=gpu.lost,
        lost_reason=gpu.lost_reason,
        errors={
            path: reason
            for group, errors in gpu.errors.items()
            if watched or not BY_NAME[group].watched_only
            for path, reason in errors.items()
        },
        memory=fast.memory if fast is not None else MemoryReading(info.memory_total, None, None),
        utilization=fast.utilization if fast is not None else UtilizationReading(None, None),
        temperature=slow.temperature if slow is not None else None,
        power=slow.power if slow is not None else PowerReading(None, info.power_limit),
        fan=slow.fan if slow is not None else None,
        clocks=ClockReading(
            slow.clocks.sm if slow is not None else None,
            slow.clocks.memory if slow is not None else None,
            info.max_clocks.get("sm"),
            info.max_clocks.get("memory"),
        ),
        pcie=link.pcie if link is not None and watched else PcieReading(None, None),
        nvlink=nvlink._replace(links=info.nvlink_links, reason=info.nvlink_reason),
        mig=mig,
        processes=gpu.processes.rows,
        processes_stale=gpu.processes.stale,
    )


def annotate(
    gpus: tuple[GpuReading, ...], annotators: Sequence[Annotator], log: logging.Logger
) -> tuple[GpuReading, ...]:
    """The readings as each annotator in turn returns them (one that fails is skipped)."""
    for annotator in annotators:
        try:
            annotated = annotator(gpus)
        except Exception:  # noqa: BLE001
            log.exception("snapshot annotator failed")
            continue
        if annotated is not None:
            gpus = tuple(annotated)
    return gpus

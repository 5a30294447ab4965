"""The GPUs of a ``kernel/status`` answer as ``%tfgpu`` and the panels show them: one row per GPU,
with this kernel's share and where its figure comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GpuRow:
    """One GPU as the panel and the magic show it."""

    index: int
    name: str
    uuid: str
    utilization: float | None
    used: int | None
    total: int | None
    mine: int | None
    lost: bool = False
    # Where this kernel's figure comes from: "nvml" or "kernel_report" (its frameworks' own)
    mine_source: str | None = None

    @property
    def others(self) -> int | None:
        """Memory held by everyone but this kernel."""
        if self.used is None:
            return None
        return max(0, self.used - (self.mine or 0))


def _mine_per_gpu(status: dict[str, Any]) -> dict[int, int]:
    """This kernel's bytes per GPU index: the server's figure, or NVML's process rows."""
    kernel = status.get("kernel") or {}
    per_gpu = (kernel.get("gpu_memory") or {}).get("per_gpu")
    if per_gpu is not None:
        return {g["index"]: g.get("used_memory") or 0 for g in per_gpu}
    return {
        gpu["index"]: sum(
            p.get("used_memory") or 0 for p in gpu.get("processes") or () if p.get("mine")
        )
        for gpu in status.get("gpus") or ()
    }


def _mine_sources(status: dict[str, Any]) -> dict[int, str]:
    """Where the server's figure of this kernel comes from, per GPU index."""
    per_gpu = ((status.get("kernel") or {}).get("gpu_memory") or {}).get("per_gpu") or ()
    return {g["index"]: g.get("source") for g in per_gpu if g.get("used_memory") is not None}


def gpu_rows(status: dict[str, Any]) -> list[GpuRow]:
    """The GPUs of a ``kernel/status``-shaped answer."""
    mine = _mine_per_gpu(status)
    sources = _mine_sources(status)
    rows = []
    for gpu in status.get("gpus") or ():
        memory = gpu.get("memory") or {}
        rows.append(
            GpuRow(
                index=gpu.get("index", len(rows)),
                name=str(gpu.get("name") or "GPU"),
                uuid=str(gpu.get("uuid") or ""),
                utilization=(gpu.get("utilization") or {}).get("gpu"),
                used=memory.get("used"),
                total=memory.get("total"),
                mine=mine.get(gpu.get("index")),
                lost=bool(gpu.get("lost")),
                mine_source=sources.get(gpu.get("index")),
            )
        )
    return rows

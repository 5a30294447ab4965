"""A bounded, compact ring buffer of per-GPU time series kept by the server."""

from __future__ import annotations

import math
import threading
from array import array
from typing import Any, Sequence

from jupyter_tfgpu.gpu.readings import GpuReading

# The series kept for each GPU, and where each comes from in a GPU reading.
SERIES = ("utilization", "memory_utilization", "memory_used", "temperature", "power")


def _series_values(gpu: GpuReading) -> tuple[float | None, ...]:
    return (
        gpu.utilization.gpu,
        gpu.utilization.memory,
        gpu.memory.used,
        gpu.temperature,
        gpu.power.draw,
    )


def _out(value: float) -> float | None:
    return None if math.isnan(value) else value


class History:
    """Fixed-capacity columns of doubles (NaN = unknown): 8 bytes per value, never grows."""

    def __init__(self, capacity: int, gpu_count: int) -> None:
        self.capacity = max(0, capacity)
        self.gpu_count = gpu_count
        self._width = gpu_count * len(SERIES)
        self._times = array("d", bytes(8 * self.capacity))
        self._values = array("d", bytes(8 * self.capacity * self._width))
        self._next = 0
        self._size = 0
        self._lock = threading.Lock()

    def nbytes(self) -> int:
        """Memory held by the buffers."""
        return (len(self._times) + len(self._values)) * 8

    def append(self, timestamp: float, gpus: Sequence[GpuReading]) -> None:
        """Record one snapshot's GPU readings (in index order)."""
        if self.capacity == 0:
            return
        row = [math.nan] * self._width
        for gpu in gpus[: self.gpu_count]:
            base = gpu.index * len(SERIES)
            for offset, value in enumerate(_series_values(gpu)):
                if value is not None:
                    row[base + offset] = float(value)
        with self._lock:
            slot = self._next
            self._times[slot] = timestamp
            self._values[slot * self._width : (slot + 1) * self._width] = array("d", row)
            self._next = (slot + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def since(self, cutoff: float) -> dict[str, Any]:
        """The samples taken at or after ``cutoff``, as one list per series per GPU."""
        with self._lock:
            order = [(self._next - self._size + i) % self.capacity for i in range(self._size)]
            slots = [s for s in order if self._times[s] >= cutoff]
            times = [round(self._times[s], 3) for s in slots]
            gpus = []
            for index in range(self.gpu_count):
                series: dict[str, Any] = {"index": index}
                for offset, name in enumerate(SERIES):
                    column = index * len(SERIES) + offset
                    series[name] = [_out(self._values[s * self._width + column]) for s in slots]
                gpus.append(series)
        return {"timestamps": times, "gpus": gpus}

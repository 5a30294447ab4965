"""Prometheus metrics on jupyter_server's own ``/metrics``, every name prefixed ``tfgpu_``.

Gauges are produced at scrape time from the sampler's latest snapshot (a custom collector), so
sampling costs nothing extra and a scrape never calls NVML.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jupyter_tfgpu.gpu.readings import GpuReading

# Module-level: one counter per process, however many servers a test suite starts.
ENFORCEMENT_ACTIONS = Counter(
    "tfgpu_enforcement_actions",
    "Enforcement decisions taken on kernels (action 'warn' is a dry run).",
    ["rule", "action"],
)


class SnapshotCollector(Collector):
    """Per-GPU and per-kernel gauges from the latest snapshot."""

    def __init__(
        self,
        snapshot: Callable[[], Sequence[GpuReading]],
        kernel_memory: Callable[[], list[dict[str, Any]]],
        sampler_stats: Callable[[], dict[str, Any]],
        log: logging.Logger | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._kernel_memory = kernel_memory
        self._sampler_stats = sampler_stats
        self.log = log or logging.getLogger(__name__)
        self._failing: set[str] = set()  # kernels whose row was skipped, logged once

    def describe(self) -> list:
        """Nothing up front: families appear once there is data (avoids a scrape at register)."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Build the gauges."""
        labels = ["gpu", "uuid", "name"]
        util = GaugeMetricFamily("tfgpu_gpu_utilization_percent", "GPU utilization.", labels=labels)
        used = GaugeMetricFamily("tfgpu_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        total = GaugeMetricFamily("tfgpu_gpu_memory_total_bytes", "GPU memory in all.", labels=labels)
        temp = GaugeMetricFamily("tfgpu_gpu_temperature_celsius", "GPU temperature.", labels=labels)
        power = GaugeMetricFamily("tfgpu_gpu_power_watts", "GPU power draw.", labels=labels)
        lost = GaugeMetricFamily("tfgpu_gpu_lost", "1 when the GPU stopped answering.", labels=labels)
        for gpu in self._snapshot():
            values = [str(gpu.index), gpu.uuid, gpu.name]
            for family, value in (
                (util, gpu.utilization.gpu),
                (used, gpu.memory.used),
                (total, gpu.memory.total),
                (temp, gpu.temperature),
                (power, gpu.power.draw),
                (lost, 1 if gpu.lost else 0),
            ):
                if value is not None:  # unknown is absent, never 0
                    family.add_metric(values, value)
        kernel = GaugeMetricFamily(
            "tfgpu_kernel_gpu_memory_bytes",
            "GPU memory held by a kernel's process tree, per GPU.",
            labels=["kernel_id", "notebook", "gpu", "source"],
        )
        rows = self._kernel_memory()
        for row in rows:
            try:
                samples = [
                    ([row["kernel_id"], row["notebook"] or "", str(gpu["index"]), gpu["source"]],
                     float(gpu["used_memory"]))
                    for gpu in row["per_gpu"]
                    if gpu["used_memory"] is not None
                ]
            except Exception:  # noqa: BLE001 - one kernel's bad row must not fail the scrape
                if row.get("kernel_id") not in self._failing:
                    self._failing.add(row.get("kernel_id"))
                    self.log.exception(
                        "jupyter-tfgpu: kernel %s left out of /metrics", row.get("kernel_id")
                    )
                continue
            for labels, value in samples:
                kernel.add_metric(labels, value)
        self._failing &= {row.get("kernel_id") for row in rows}
        stats = self._sampler_stats()
        fraction = GaugeMetricFamily(
            "tfgpu_sampler_backend_time_ratio",
            "Share of wall time the sampler spent inside GPU backend calls.",
            value=stats.get("backend_time_fraction", 0.0),
        )
        yield from (util, used, total, temp, power, lost, kernel, fraction)


def register(collector: SnapshotCollector) -> Callable[[], None]:
    """Add the collector to the default registry (the one ``/metrics`` serves)."""
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)

"""Prometheus metrics on jupyter_server's own ``/metrics``, every name prefixed ``tfgpu_``.

Made to be aggregated across servers: per-kernel series say who and where (``user``,
``server``, ``hostname``, ``notebook``, ``kernel_id``), GPU series carry the labels of NVIDIA's
dcgm-exporter (``gpu``, ``UUID``, ``modelName``, ``Hostname``) so one PromQL query can join
them. Everything is produced at scrape time from what the sampler last took and the running
totals kept per snapshot: a scrape never calls NVML. ``SERIES`` is the catalogue (the docs'
table is made from it).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.server.kernels.usage import Usage

GPU_LABELS = ("gpu", "UUID", "modelName", "Hostname")
KERNEL_LABELS = ("user", "server", "hostname", "notebook", "kernel_id")
SERVER_LABELS = ("user", "server", "hostname", "version")


@dataclass(frozen=True)
class Series:
    """One metric family: its name as scraped, type, labels and meaning."""

    name: str
    kind: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    help: str


SERIES = (
    Series("tfgpu_server_info", "gauge", SERVER_LABELS,
           "Always 1: who runs this server, where, and which jupyter-tfgpu version."),
    Series("tfgpu_gpu_utilization_ratio", "gauge", GPU_LABELS,
           "Share of the last sample period the GPU was busy (0 to 1)."),
    Series("tfgpu_gpu_memory_used_bytes", "gauge", GPU_LABELS, "GPU memory in use."),
    Series("tfgpu_gpu_memory_total_bytes", "gauge", GPU_LABELS, "GPU memory in all."),
    Series("tfgpu_gpu_temperature_celsius", "gauge", GPU_LABELS, "GPU temperature."),
    Series("tfgpu_gpu_power_watts", "gauge", GPU_LABELS, "GPU power draw."),
    Series("tfgpu_gpu_lost", "gauge", GPU_LABELS, "1 when the GPU stopped answering, else 0."),
    Series("tfgpu_gpu_nvlink_links", "gauge", GPU_LABELS,
           "NVLink links the GPU has (0: none)."),
    Series("tfgpu_gpu_nvlink_links_active", "gauge", GPU_LABELS,
           "NVLink links up at the last interconnect reading (read only while a client watches)."),
    Series("tfgpu_gpu_nvlink_transmit_bytes_total", "counter", GPU_LABELS,
           "Data sent over all NVLink links since the server first read them, summed per link: "
           "a link that does not answer counts at its last value, a driver counter that "
           "restarts is carried on, so it never decreases; rate() gives throughput while "
           "someone watches."),
    Series("tfgpu_gpu_nvlink_receive_bytes_total", "counter", GPU_LABELS,
           "Data received over all NVLink links, as the transmit counter."),
    Series("tfgpu_kernel_gpu_memory_bytes", "gauge", (*KERNEL_LABELS, "gpu", "UUID", "source"),
           "GPU memory held by a kernel's processes, per GPU; source says how it was found "
           "(nvml, or the kernel's own report)."),
    Series("tfgpu_kernel_memory_limit_bytes", "gauge", (*KERNEL_LABELS, "enforcement"),
           "The GPU memory cap the kernel runs under (the tighter of its start and the policy in "
           "force); absent when it has none. enforcement says how it is held: driver (the "
           "driver refuses allocations past it), framework (settings the kernel's code could "
           "undo) or none (no setting reaches the kernel); compare it with other series "
           "ignoring (enforcement)."),
    Series("tfgpu_kernel_idle_seconds", "gauge", KERNEL_LABELS,
           "Seconds since the kernel last ran code; absent while it is busy."),
    Series("tfgpu_kernel_gpu_memory_byte_seconds_total", "counter",
           (*KERNEL_LABELS, "gpu", "UUID"),
           "GPU memory held over time, per GPU: bytes times seconds, counted every sample."),
    Series("tfgpu_kernel_gpu_busy_seconds_total", "counter", (*KERNEL_LABELS, "gpu", "UUID"),
           "Seconds the kernel's processes kept the GPU busy (NVML's per-process SM "
           "utilization); 0 where the driver gives no per-process figures."),
    Series("tfgpu_placement_decisions_total", "counter", ("strategy", "outcome"),
           "GPUs chosen for kernels with devices 'auto': outcome placed, partial (fewer GPUs "
           "than asked) or cpu_only."),
    Series("tfgpu_enforcement_actions_total", "counter", ("rule", "action"),
           "Enforcement decisions taken on kernels, by rule (memory_cap, idle); action 'warn' "
           "is a dry run."),
    Series("tfgpu_sampler_backend_time_ratio", "gauge", (),
           "Share of wall time the sampler spent inside GPU backend calls."),
)  # fmt: skip
_BY_NAME = {s.name: s for s in SERIES}

# Module-level: one counter per process, however many servers a test suite starts.
ENFORCEMENT_ACTIONS = Counter(
    "tfgpu_enforcement_actions",
    _BY_NAME["tfgpu_enforcement_actions_total"].help,
    ["rule", "action"],
)


@dataclass(frozen=True)
class ServerIdentity:
    """Who runs this server and where: the labels that tell servers apart in a cluster."""

    user: str
    server: str
    hostname: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServerIdentity:
        """JupyterHub's user and server name when spawned by a hub, else the OS user."""
        env = os.environ if environ is None else environ
        user = env.get("JUPYTERHUB_USER")
        if not user:
            try:
                user = getpass.getuser()
            except Exception:  # noqa: BLE001 - a uid without a name
                user = str(os.getuid())
        return cls(user, env.get("JUPYTERHUB_SERVER_NAME", ""), socket.gethostname())


def _family(name: str, extra_help: str = "") -> GaugeMetricFamily | CounterMetricFamily:
    series = _BY_NAME[name]
    make = CounterMetricFamily if series.kind == "counter" else GaugeMetricFamily
    # prometheus_client adds _total to a counter family's samples itself.
    base = name.removesuffix("_total") if series.kind == "counter" else name
    return make(base, series.help + extra_help, labels=list(series.labels))


class SnapshotCollector(Collector):
    """Every tfgpu_ series but the enforcement counter, from what the server already holds."""

    def __init__(
        self,
        snapshot: Callable[[], Sequence[GpuReading]],
        kernel_rows: Callable[[], list[dict[str, Any]]],
        sampler_stats: Callable[[], dict[str, Any]],
        identity: ServerIdentity | None = None,
        usage: Callable[[], Mapping[tuple[str, int], Usage]] = dict,
        placements: Callable[[], Mapping[tuple[str, str], int]] = dict,
        version: str = "",
        log: logging.Logger | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._kernel_rows = kernel_rows
        self._sampler_stats = sampler_stats
        self._identity = identity or ServerIdentity.from_environment()
        self._usage = usage
        self._placements = placements
        self._version = version
        self.log = log or logging.getLogger(__name__)
        self._failing: set[str] = set()  # kernels whose row was skipped, logged once

    def describe(self) -> list:
        """Nothing up front: families appear once there is data (avoids a scrape at register)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build every family."""
        who = self._identity
        info = _family("tfgpu_server_info")
        info.add_metric([who.user, who.server, who.hostname, self._version], 1)
        yield info
        yield from self._gpu_families()
        yield from self._kernel_families()
        placements = _family("tfgpu_placement_decisions_total")
        for (strategy, outcome), count in sorted(self._placements().items()):
            placements.add_metric([strategy, outcome], count)
        yield placements
        yield GaugeMetricFamily(
            "tfgpu_sampler_backend_time_ratio",
            _BY_NAME["tfgpu_sampler_backend_time_ratio"].help,
            value=self._sampler_stats().get("backend_time_fraction", 0.0),
        )

    def _gpu_families(self) -> Iterator[Metric]:
        names = (
            "tfgpu_gpu_utilization_ratio", "tfgpu_gpu_memory_used_bytes",
            "tfgpu_gpu_memory_total_bytes", "tfgpu_gpu_temperature_celsius",
            "tfgpu_gpu_power_watts", "tfgpu_gpu_lost", "tfgpu_gpu_nvlink_links",
            "tfgpu_gpu_nvlink_links_active", "tfgpu_gpu_nvlink_transmit_bytes_total",
            "tfgpu_gpu_nvlink_receive_bytes_total",
        )  # fmt: skip
        families = [_family(name) for name in names]
        for gpu in self._snapshot():
            labels = [str(gpu.index), gpu.uuid, gpu.name, self._identity.hostname]
            util = gpu.utilization.gpu
            values = (
                None if util is None else util / 100,
                gpu.memory.used,
                gpu.memory.total,
                gpu.temperature,
                gpu.power.draw,
                1 if gpu.lost else 0,
                gpu.nvlink.links,
                gpu.nvlink.active,
                gpu.nvlink.tx_total,
                gpu.nvlink.rx_total,
            )
            for family, value in zip(families, values):
                if value is not None:  # unknown is absent, never 0
                    family.add_metric(labels, value)
        yield from families

    def _kernel_families(self) -> Iterator[Metric]:
        who = self._identity
        memory = _family("tfgpu_kernel_gpu_memory_bytes")
        limit = _family("tfgpu_kernel_memory_limit_bytes")
        idle = _family("tfgpu_kernel_idle_seconds")
        rows = self._kernel_rows()
        notebooks: dict[str, str] = {}
        for row in rows:
            try:
                kernel = [who.user, who.server, who.hostname, row["notebook"] or "", row["kernel_id"]]
                samples = [
                    ([*kernel, str(gpu["index"]), str(gpu.get("uuid") or ""), gpu["source"]],
                     float(gpu["used_memory"]))
                    for gpu in row["per_gpu"]
                    if gpu["used_memory"] is not None
                ]  # fmt: skip
                cap = row.get("limit_bytes")
                held = str(row.get("enforcement") or "none")
                idle_seconds = row.get("idle_seconds")
                cap = None if cap is None else float(cap)
                idle_seconds = None if idle_seconds is None else float(idle_seconds)
            except Exception:  # noqa: BLE001 - one kernel's bad row must not fail the scrape
                if row.get("kernel_id") not in self._failing:
                    self._failing.add(row.get("kernel_id"))
                    self.log.exception(
                        "jupyter-tfgpu: kernel %s left out of /metrics", row.get("kernel_id")
                    )
                continue
            notebooks[row["kernel_id"]] = row["notebook"] or ""
            for labels, value in samples:
                memory.add_metric(labels, value)
            if cap is not None:
                limit.add_metric([*kernel, held], cap)
            if idle_seconds is not None:
                idle.add_metric(kernel, idle_seconds)
        self._failing &= {row.get("kernel_id") for row in rows}
        held = _family("tfgpu_kernel_gpu_memory_byte_seconds_total")
        busy = _family("tfgpu_kernel_gpu_busy_seconds_total")
        for (kernel_id, index), usage in sorted(self._usage().items()):
            if kernel_id not in notebooks:
                continue  # stopped since the last snapshot
            labels = [who.user, who.server, who.hostname, notebooks[kernel_id], kernel_id,
                      str(index), usage.uuid]  # fmt: skip
            held.add_metric(labels, usage.memory_byte_seconds)
            busy.add_metric(labels, usage.busy_seconds)
        yield from (memory, limit, idle, held, busy)


def register(collector: SnapshotCollector) -> Callable[[], None]:
    """Add the collector to the default registry (the one ``/metrics`` serves)."""
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)

"""How much GPU memory a kernel's process holds outside its framework's allocator (the CUDA
context, the libraries' kernels, the framework's runtime), measured per GPU model and driver.

A cap is what NVML shows for the kernel's process; its frameworks get the cap less this
(``policy.environment``). The figure depends on the GPU, the driver, CUDA and the framework,
so it is measured here, not guessed: the server sees both NVML's figure for a kernel's process
on a GPU and what the kernel's framework reports it reserved there, and the difference is the
context. Until a GPU model and driver has a measurement, launches use the documented starting
value (``STARTING_CONTEXT_MB``).

A measurement is taken only where it means what it says:

- the kernel has exactly one process on that GPU in NVML, matched by PID (so both figures are
  of the same process), with a figure, and the GPU's process list is this round's;
- the kernel's report comes from frameworks that report what their allocator reserved (torch's
  ``memory_reserved``, JAX's pool), not only what is in use (TensorFlow's figure leaves out what
  its allocator holds free, so the difference would not be a context);
- both figures stood still between two reports (a growing allocation read by NVML before the
  report, or after it, would be counted as context or taken from it).

The reserve for a GPU model and driver is the largest measurement among the last
``KERNELS_KEPT`` kernels measured there (per kernel its largest: libraries loaded later, such as
cuBLAS on a first matrix product, grow the context). A report is the kernel's word, and kernel
code is untrusted: a measurement over ``MAX_CONTEXT_BYTES`` is not taken, so a kernel that lies
can lower others' framework limits by at most that much, until newer kernels push it out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from jupyter_tfgpu.gpu import DeviceInfo, GiB, MiB
from jupyter_tfgpu.gpu.keys import gpu_keys
from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.policy.environment import STARTING_CONTEXT_MB, ContextReserve

# Far above any CUDA context seen (about 0.3 to 0.6 GiB with lazily loaded modules; the H200
# run measured 518 MiB for torch, 550 MiB for JAX), and a bound on what a lying report can do.
MAX_CONTEXT_BYTES = 2 * GiB
KERNELS_KEPT = 16  # per GPU model and driver
MODELS_KEPT = 32  # GPU model and driver pairs
# The frameworks whose report is what their allocator reserved (see tfgpu_report's probes).
RESERVING_FRAMEWORKS = frozenset({"torch", "jax"})


@dataclass(frozen=True)
class _Sighting:
    """One kernel's two figures on one GPU in one round."""

    nvml: int
    reported: int
    received: float  # when the report was received


class ContextSizes:
    """Measured context sizes per (GPU model, driver), fed by every snapshot, read at launches.

    ``observe`` runs in the sampler's thread (as a snapshot annotator, after attribution);
    ``reserve`` and ``to_json`` on the event loop: a lock guards the table.
    """

    def __init__(
        self,
        reports: Callable[[], Mapping[str, Mapping[str, Any]]],
        devices: Callable[[], Sequence[DeviceInfo]],
        driver: Callable[[], str | None],
        simulated: Callable[[], bool] = lambda: False,
    ) -> None:
        self._reports = reports  # KernelReports.current: kernel id -> frameworks, devices, received
        self._devices = devices
        self._driver = driver
        self._simulated = simulated
        self._lock = threading.Lock()
        # (GPU name, driver) -> kernel id -> the largest measurement of that kernel, in bytes
        self._table: OrderedDict[tuple[str, str], OrderedDict[str, int]] = OrderedDict()
        # (kernel id, GPU uuid) -> the last round's figures, to see that they stood still
        self._last: dict[tuple[str, str], _Sighting] = {}

    # -- measuring (sampler thread) ------------------------------------------------------------

    def observe(self, gpus: Sequence[GpuReading]) -> None:
        """Take the measurements this snapshot allows; changes nothing in it (returns None)."""
        if self._simulated():
            return None
        driver = self._driver() or "unknown driver"
        reports = self._reports() or {}
        seen: dict[tuple[str, str], _Sighting] = {}
        for gpu in gpus:
            if gpu.lost or gpu.processes_stale or not gpu.name:
                continue
            for kernel_id, (nvml, reported, received) in _sightings(gpu, reports).items():
                now = _Sighting(nvml, reported, received)
                key = (kernel_id, gpu.uuid)
                seen[key] = now
                before = self._last.get(key)
                if (
                    before is not None
                    and (before.nvml, before.reported) == (nvml, reported)
                    and before.received < received
                ):
                    self._record((gpu.name, driver), kernel_id, nvml - reported)
        self._last = seen
        return None

    def _record(self, model: tuple[str, str], kernel_id: str, size: int) -> None:
        if not 0 < size <= MAX_CONTEXT_BYTES:
            return
        with self._lock:
            kernels = self._table.setdefault(model, OrderedDict())
            self._table.move_to_end(model)
            kernels[kernel_id] = max(size, kernels.get(kernel_id, 0))
            kernels.move_to_end(kernel_id)
            while len(kernels) > KERNELS_KEPT:
                kernels.popitem(last=False)
            while len(self._table) > MODELS_KEPT:
                self._table.popitem(last=False)

    # -- reading (event loop) ------------------------------------------------------------------

    def measured(self, name: str, driver: str | None) -> int | None:
        """The largest recent measurement for a GPU model and driver, in bytes; None if none."""
        with self._lock:
            kernels = self._table.get((name, driver or "unknown driver"))
            return max(kernels.values()) if kernels else None

    def reserve(self, gpus: list[str] | None) -> ContextReserve:
        """The context reserve for a kernel on ``gpus`` (UUIDs, MIG UUIDs or indices as its
        policy names them; None: any GPU): the largest over them, measured where it was, the
        starting value where not."""
        if self._simulated():
            return ContextReserve(0, "simulated")
        driver = self._driver()
        names = sorted(
            {info.name for info in self._devices() if gpus is None or _names(info) & set(gpus)}
        )
        sizes = {name: self.measured(name, driver) for name in names}
        measured = {name: size for name, size in sizes.items() if size is not None}
        if not names or len(measured) < len(names):
            # A GPU without a measurement: the starting value, unless one measured is larger.
            largest = max([STARTING_CONTEXT_MB * MiB, *measured.values()])
            return ContextReserve(_mib(largest), "starting value")
        return ContextReserve(
            _mib(max(measured.values())),
            "measured",
            f"{', '.join(names)}, driver {driver or 'unknown'}",
        )

    def to_json(self) -> list[dict[str, Any]]:
        """The table, for the API: per GPU model and driver, the reserve and how many kernels."""
        with self._lock:
            rows = [(model, dict(kernels)) for model, kernels in self._table.items()]
        return [
            {
                "gpu": name,
                "driver": driver,
                "context_mb": _mib(max(kernels.values())),
                "kernels_measured": len(kernels),
            }
            for (name, driver), kernels in rows
        ]


def _sightings(
    gpu: GpuReading, reports: Mapping[str, Mapping[str, Any]]
) -> dict[str, tuple[int, int, float]]:
    """kernel id -> (NVML's figure, the reserved figure it reported, when) on this GPU, for the
    kernels that allow a measurement here (see the module's docstring)."""
    processes: dict[str, list[int | None]] = {}
    for proc in gpu.processes:
        if proc.attributed_by == "pid" and proc.kernel_id is not None:
            processes.setdefault(proc.kernel_id, []).append(proc.used_memory)
    keys = gpu_keys(gpu)
    found = {}
    for kernel_id, figures in processes.items():
        report = reports.get(kernel_id)
        if len(figures) != 1 or figures[0] is None or report is None:
            continue
        if not set(report.get("frameworks") or ()) <= RESERVING_FRAMEWORKS:
            continue
        held = [size for name, size in (report.get("devices") or {}).items() if name in keys]
        if held:
            found[kernel_id] = (figures[0], sum(held), float(report.get("received") or 0.0))
    return found


def _names(info: DeviceInfo) -> set[str]:
    """Every name a policy may give a GPU: its UUID, its index, its MIG instances' UUIDs."""
    return {info.uuid, str(info.index), *(m.uuid for m in info.mig_instances)}


def _mib(size: int) -> int:
    """Bytes as whole MiB, rounded up (a reserve must not come out short)."""
    return -(-size // MiB)

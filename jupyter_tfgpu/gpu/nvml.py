"""GPU readings from NVIDIA's NVML through nvidia-ml-py (``pynvml``)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from jupyter_tfgpu.gpu.backend import BackendUnavailable, DeviceInfo
from jupyter_tfgpu.gpu.group_readings import (
    ClockSpeeds,
    FastReading,
    InterconnectReading,
    SlowReading,
)
from jupyter_tfgpu.gpu.nvlink import NvlinkCounters
from jupyter_tfgpu.gpu.nvml_calls import NvmlCalls, load_pynvml
from jupyter_tfgpu.gpu.nvml_facts import DeviceFacts
from jupyter_tfgpu.gpu.nvml_processes import ProcessLists
from jupyter_tfgpu.gpu.readings import (
    MemoryReading,
    NvlinkReading,
    PcieReading,
    PowerReading,
    ProcessReading,
    UtilizationReading,
)

UNKNOWN_MEMORY = MemoryReading(None, None, None, None)


class NvmlBackend:
    """Reads NVIDIA GPUs through NVML; one instance per server.

    Its parts: ``NvmlCalls`` (the error policy, versioned symbols), ``DeviceFacts`` (handles,
    static facts, MIG instances), ``ProcessLists``; the per-sample readings are its own.
    """

    name = "nvml"
    simulated = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # times the MIG re-enumeration
        self._nvml: Any = None
        # Made at each open, so nothing probed or enumerated outlives a shutdown.
        self._calls: NvmlCalls | None = None
        self._facts: DeviceFacts | None = None
        self._processes: ProcessLists | None = None
        # GPU index -> its NVLink counters, per link (kept across a reopen: totals never drop)
        self._nvlink: dict[int, NvlinkCounters] = {}
        self._lock = threading.Lock()
        self._open = False

    # -- life cycle --------------------------------------------------------------------------

    def open(self) -> list[DeviceInfo]:
        """Initialise NVML and read each GPU's facts on its own.

        Fails as a whole (``BackendUnavailable``) only when the library or the device count
        cannot be had; a GPU whose facts cannot be read is a lost ``DeviceInfo`` with the
        reason, and ``reopen`` reads it again.
        """
        nvml = load_pynvml()
        self._nvml = nvml
        calls = NvmlCalls(nvml)
        try:
            nvml.nvmlInit()
        except Exception as err:  # noqa: BLE001 - a library that cannot start is a reason
            raise BackendUnavailable(calls.describe(err)) from err
        self._open = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as err:
            self.close()  # the sampler opens the whole library again later
            raise BackendUnavailable(calls.describe(err)) from err
        self._calls = calls
        self._facts = DeviceFacts(calls, count, self._clock)
        self._processes = ProcessLists(calls, self._facts)
        self._nvlink = {}
        return [self.reopen(index) for index in range(count)]

    def reopen(self, index: int) -> DeviceInfo:
        """Read one GPU's handle and facts again; a GPU that fails is lost, with the reason."""
        assert self._facts is not None
        return self._facts.reopen(index)

    def device_info(self, index: int) -> DeviceInfo:
        """The GPU's facts as last read (no driver call)."""
        assert self._facts is not None
        return self._facts.infos[index]

    def close(self) -> None:
        """Shut NVML down; safe to call twice."""
        with self._lock:
            if self._open and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # noqa: BLE001 - nothing left to do about it
                    pass
            self._open = False

    def versions(self) -> dict[str, str | None]:
        """Driver, NVML and CUDA driver versions."""
        def ask(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception:  # noqa: BLE001 - versions are informative only
                return None

        cuda = ask(self._nvml.nvmlSystemGetCudaDriverVersion)
        return {
            "driver": ask(self._nvml.nvmlSystemGetDriverVersion),
            "nvml": ask(self._nvml.nvmlSystemGetNVMLVersion),
            "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
        }

    # -- per-sample readings -----------------------------------------------------------------

    def read_fast(self, index: int) -> FastReading:
        """Memory and utilization (and per-MIG-instance memory)."""
        assert self._calls is not None and self._facts is not None
        calls = self._calls
        handle = self._facts.handle(index)
        errors: dict[str, str] = {}
        memory = calls.memory(index, handle, errors)
        rates = calls.optional(
            index, self._nvml.nvmlDeviceGetUtilizationRates, handle, errors=errors,
            field="utilization",
        )
        mig_memory = {
            slot: calls.memory(index, mig, errors, f"mig.instances.{slot}.memory")
            for slot, mig in self._facts.mig_handles.get(index, ())
        }
        return FastReading(
            memory=memory or UNKNOWN_MEMORY,
            utilization=UtilizationReading(
                rates.gpu if rates is not None else None,
                rates.memory if rates is not None else None,
            ),
            mig_memory=mig_memory,
            errors=errors,
        )

    def read_slow(self, index: int) -> SlowReading:
        """Temperature (C), power (W), fan (%), current clocks (MHz)."""
        assert self._calls is not None and self._facts is not None
        calls = self._calls
        nvml = self._nvml
        handle = self._facts.handle(index)
        errors: dict[str, str] = {}

        def ask(field: str, fn: Callable[..., Any], *args: Any) -> Any:
            return calls.optional(index, fn, handle, *args, errors=errors, field=field)

        draw = ask("power.draw", nvml.nvmlDeviceGetPowerUsage)
        limit = ask("power.limit", nvml.nvmlDeviceGetEnforcedPowerLimit)
        temperature = ask("temperature", nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU)
        return SlowReading(
            temperature=temperature,
            power=PowerReading(
                draw / 1000 if draw is not None else None,
                limit / 1000 if limit is not None else None,
            ),
            fan=ask("fan", nvml.nvmlDeviceGetFanSpeed),
            clocks=ClockSpeeds(
                ask("clocks.sm", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
                ask("clocks.memory", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
            ),
            errors=errors,
        )

    def read_pcie(self, index: int) -> InterconnectReading:
        """PCIe throughput in bytes/s (NVML reports KB/s), and NVLink's where the GPU has links."""
        assert self._calls is not None and self._facts is not None
        calls = self._calls
        nvml = self._nvml
        handle = self._facts.handle(index)
        errors: dict[str, str] = {}
        throughput = nvml.nvmlDeviceGetPcieThroughput
        tx = calls.optional(
            index, throughput, handle, nvml.NVML_PCIE_UTIL_TX_BYTES, errors=errors, field="pcie.tx"
        )
        rx = calls.optional(
            index, throughput, handle, nvml.NVML_PCIE_UTIL_RX_BYTES, errors=errors, field="pcie.rx"
        )
        infos = self._facts.infos
        links = infos[index].nvlink_links if index < len(infos) else 0
        return InterconnectReading(
            pcie=PcieReading(
                tx * 1024 if tx is not None else None,
                rx * 1024 if rx is not None else None,
            ),
            nvlink=self._read_nvlink(index, handle, links) if links else None,
            errors=errors,
        )

    def read_processes(self, index: int) -> tuple[ProcessReading, ...]:
        """Compute and graphics processes, one row per PID, with per-process utilization."""
        assert self._processes is not None
        return self._processes.read(index)

    # -- NVLink (field values; read with PCIe, only while someone watches) -----------------------

    def _read_nvlink(self, index: int, handle: Any, links: int) -> NvlinkReading:
        """Active links, throughput (bytes/s) and data totals (bytes) over all links."""
        assert self._calls is not None
        calls = self._calls
        nvml = self._nvml
        ids: list[tuple[int, int]] = []
        for link in range(links):
            ids += [
                (nvml.NVML_FI_DEV_NVLINK_GET_STATE, link),
                (nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, link),
                (nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, link),
            ]
        values = calls.field_values(index, handle, ids)
        counters = self._nvlink.setdefault(index, NvlinkCounters())
        if values is None:  # no link answered: the totals stay where they were
            tx_total, rx_total = counters.totals()
            return NvlinkReading(links, None, None, None, tx_total, rx_total)
        states = [calls.value(v) for v in values[0::3]]
        known = [s for s in states if s is not None]
        active = sum(1 for s in known if s == nvml.NVML_NVLINK_STATE_ACTIVE) if known else None
        now = max((int(v.timestamp) for v in values), default=0)
        rates = counters.update(now, [calls.value(v) for v in values[1::3]],
                                [calls.value(v) for v in values[2::3]])  # fmt: skip
        return NvlinkReading(links, active, *rates)

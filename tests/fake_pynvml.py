"""A fake `pynvml` module: nvidia-ml-py's Python API over simulated GPUs instead of libnvidia-ml."""

from __future__ import annotations

import collections
import ctypes
import threading
import time
import types
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pynvml as real

from tests.fake_nvml_limits import FakeMemoryLimits

# NVML reports "no MIG instance" as 0xFFFFFFFF in process records.
NO_INSTANCE = real.NVML_VALUE_NOT_AVAILABLE_uint.value
_ERR = real.NVMLError

_PROCESS_LISTS = [
    f"nvmlDeviceGet{kind}RunningProcesses{v}"
    for kind in ("Compute", "Graphics", "MPSCompute")
    for v in ("_v2", "_v3")
]
# Functions that answer on a MIG device handle; the rest return NOT_SUPPORTED there, as NVML does
# for sensors and clocks that belong to the parent GPU.
_MIG_OK = {
    "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceIsMigDeviceHandle", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses", *_PROCESS_LISTS,
}  # fmt: skip


@dataclass
class FakeProcess:
    """One process record; used_memory None stands for NVML_VALUE_NOT_AVAILABLE, as in pynvml."""

    pid: int
    used_memory: int | None = 0
    gpu_instance_id: int = NO_INSTANCE
    compute_instance_id: int = NO_INSTANCE


@dataclass
class FakeLink:
    """One NVLink link: its state and the KiB of data it carried each way (counters).

    Lower a counter to stand for a driver reset; set ``error`` (an NVML code) to make the
    link's data fields fail in their field-value slots while the call itself succeeds.
    """

    active: bool = True
    tx_kib: int = 0
    rx_kib: int = 0
    error: int | None = None


@dataclass
class FakeMig:
    """One MIG device (GPU instance + compute instance) under a FakeGpu."""

    uuid: str = ""
    memory_total: int = 10 * 2**30
    memory_used: int = 0
    gpu_instance_id: int = 1
    compute_instance_id: int = 0
    profile: str = "1g.10gb"


@dataclass
class FakeGpu:
    """One simulated GPU; every field may be changed while the fake is in use."""

    name: str = "NVIDIA A100-SXM4-80GB"
    uuid: str = ""  # FakeNvml fills in a deterministic "GPU-..." from the index
    memory_total: int = 80 * 2**30
    memory_used: int = 0  # as memory info v2 reports it: without the driver's reserved memory
    memory_reserved: int = 512 * 2**20
    util_gpu: int = 0
    util_memory: int = 0
    temperature: int = 35
    power_draw_mw: int = 60_000
    power_limit_mw: int = 400_000
    fan: int | None = None  # SXM boards have no fan: NOT_SUPPORTED
    clocks_sm: int = 1410
    clocks_mem: int = 1593
    max_clock_sm: int = 1410
    max_clock_mem: int = 1593
    pcie_tx_kb: int = 0
    pcie_rx_kb: int = 0
    nvlink: list[FakeLink] = field(default_factory=list)  # empty: no NVLink (NOT_SUPPORTED)
    processes: list[FakeProcess] = field(default_factory=list)
    graphics_processes: list[FakeProcess] = field(default_factory=list)
    # MPS clients, as nvmlDeviceGetMPSComputeRunningProcesses lists them; under MPS NVML's compute
    # list names the MPS server instead, so a test puts the server's PID in ``processes``.
    mps_processes: list[FakeProcess] = field(default_factory=list)
    process_utilization: list[tuple[int, int, int]] = field(default_factory=list)
    mig_enabled: bool = False
    compute_capability: tuple[int, int] = (8, 0)  # an A100's
    compute_mode: int = 0  # NVML_COMPUTEMODE_DEFAULT (3: exclusive process, 2: prohibited)
    mig_devices: list[FakeMig | None] = field(default_factory=list)  # None marks an empty slot
    max_mig_devices: int = 7
    # NVML lists every instance's processes on the parent handle only for a privileged caller;
    # True: the parent's process lists raise NoPermission in MIG mode (an ordinary user).
    mig_parent_lists_privileged: bool = False
    not_supported: set[str] = field(default_factory=set)
    no_permission: set[str] = field(default_factory=set)
    lost: bool = False
    unknown: bool = False


@dataclass
class Fault:
    """A failure injected on one function: raise ``error`` (an NVML code or an exception)."""

    error: int | BaseException
    times: int | None = None  # None: until cleared
    gpu: int | None = None  # None: whatever the arguments; else only calls on that GPU's handles
    delay: float = 0.0  # seconds the call hangs before it fails, as a driver timeout does
    raised: int = 0


class FakeHandle:
    """Opaque device handle, standing in for the binding's c_nvmlDevice_t pointer."""

    __slots__ = ("_gpu", "_mig")

    def __init__(self, gpu: FakeGpu, mig: FakeMig | None = None):
        self._gpu = gpu
        self._mig = mig

    def __repr__(self) -> str:
        return f"<FakeHandle {(self._mig or self._gpu).uuid}>"


# Readings with no arguments but the handle (or none), and no symbol other than their own name.
_SYSTEM = {
    "nvmlSystemGetDriverVersion": lambda f: f.driver_version,
    "nvmlSystemGetNVMLVersion": lambda f: f"{f.cuda_driver_version // 1000}.{f.driver_version}",
    "nvmlSystemGetCudaDriverVersion": lambda f: f.cuda_driver_version,
    "nvmlSystemGetCudaDriverVersion_v2": lambda f: f.cuda_driver_version,
}
_DEVICE_FIELDS = {
    "nvmlDeviceGetPowerUsage": "power_draw_mw",
    "nvmlDeviceGetEnforcedPowerLimit": "power_limit_mw",
    "nvmlDeviceGetPowerManagementLimit": "power_limit_mw",
}


class FakeNvml(FakeMemoryLimits):
    """Simulated NVML: build it, then install `.module` as sys.modules["pynvml"]."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        init_error: int | None = None,
        missing_symbols: set[str] | frozenset[str] = frozenset(),
        latency: dict[str, float] | None = None,
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
        sleep: Callable[[float], None] = time.sleep,
        timer: Callable[[], float] = time.perf_counter,
        privileged: bool | None = None,  # memory limits: the caller is root (None: its euid)
    ):
        self.gpus = [FakeGpu()] if gpus is None else list(gpus)
        self.init_error = init_error
        self.missing_symbols = set(missing_symbols)
        self.latency = dict(latency or {})
        # How latencies pass and call_time is measured: a test may inject a simulated clock.
        self.sleep = sleep
        self.timer = timer
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.calls: collections.Counter[str] = collections.Counter()
        self.call_time = 0.0
        self.faults: dict[str, Fault] = {}
        self.faults_raised = 0
        self._refcount = 0
        self._count_at_init: int | None = None  # GPUs counted at the first nvmlInit
        self._loaded = False  # the real binding keeps libnvidia-ml loaded after nvmlShutdown
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._init_memory_limits(privileged)
        for i, gpu in enumerate(self.gpus):
            self._name(i, gpu)
        self.module = self._build_module()

    @staticmethod
    def _name(i: int, gpu: FakeGpu) -> None:
        gpu.uuid = gpu.uuid or f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, f'fake-gpu-{i}')}"
        for j, mig in enumerate(gpu.mig_devices):
            if mig is not None and not mig.uuid:
                mig.uuid = f"MIG-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, f'fake-mig-{i}-{j}')}"

    def add_gpu(self, gpu: FakeGpu) -> FakeGpu:
        """A GPU the driver brings up now; NVML counts it from the next ``nvmlInit``."""
        with self._lock:
            self._name(len(self.gpus), gpu)
            self.gpus.append(gpu)
        return gpu

    def create_mig(self, gpu: int, slot: int, mig: FakeMig) -> FakeMig:
        """Make MIG instance ``mig`` in ``slot`` of GPU ``gpu`` now (``nvidia-smi mig -cgi``)."""
        with self._lock:
            devices = self.gpus[gpu].mig_devices
            devices.extend([None] * (slot + 1 - len(devices)))
            devices[slot] = mig
            self._name(gpu, self.gpus[gpu])
        return mig

    @property
    def initialized(self) -> bool:
        """True between a successful nvmlInit and the matching nvmlShutdown."""
        return self._refcount > 0

    def reset_counters(self) -> None:
        """Zero `calls` and `call_time`, e.g. after a benchmark's warm-up."""
        with self._lock:
            self.calls.clear()
            self.call_time = 0.0

    def inject(
        self,
        name: str,
        error: int | BaseException,
        times: int | None = None,
        gpu: int | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Make ``name`` fail with ``error`` (e.g. ``NVML_ERROR_TIMEOUT``) ``times`` times, or
        until cleared; ``gpu`` limits it to that GPU's handles, ``delay`` makes it hang first."""
        fault = Fault(error, times, gpu, delay)
        with self._lock:
            self.faults[name] = fault
        return fault

    def clear(self, name: str | None = None) -> None:
        """Remove the fault on ``name``, or every fault."""
        with self._lock:
            if name is None:
                self.faults.clear()
            else:
                self.faults.pop(name, None)

    def _take_fault(self, name: str, args: tuple) -> Fault | None:
        """The fault this call must fail with, counted; None when the call goes through."""
        with self._lock:
            fault = self.faults.get(name)
            if fault is None:
                return None
            if fault.gpu is not None:
                handle = args[0] if args else None
                gpu = self.gpus[fault.gpu] if fault.gpu < len(self.gpus) else None
                if isinstance(handle, int):  # nvmlDeviceGetHandleByIndex(index)
                    if handle != fault.gpu:
                        return None
                elif not isinstance(handle, FakeHandle) or handle._gpu is not gpu:
                    return None
            fault.raised += 1
            self.faults_raised += 1
            if fault.times is not None and fault.raised >= fault.times:
                del self.faults[name]
            return fault

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml", "Fake nvidia-ml-py for tests.")
        for name, value in vars(real).items():
            # Constants, structs and the real NVMLError classes; no real functions, no lib state.
            if name.startswith("_") or name in ("nvmlLib", "libLoadLock"):
                continue
            if isinstance(value, (types.FunctionType, types.ModuleType)):
                continue
            setattr(module, name, value)
        for name in ("nvmlExceptionClass", "nvmlStructToFriendlyObject"):
            setattr(module, name, getattr(real, name))
        functions = {n: getattr(self, n) for n in dir(type(self)) if n.startswith("nvml")}
        for name, fn in functions.items():
            setattr(module, name, self._instrument(name, fn))
        for name, reading in _SYSTEM.items():
            setattr(module, name, self._instrument(name, self._system(name, reading)))
        for name, attr in _DEVICE_FIELDS.items():
            setattr(module, name, self._instrument(name, self._field(name, attr)))
        for name in _PROCESS_LISTS:
            setattr(module, name, self._instrument(name, self._process_list(name)))
        module.fake = self
        return module

    def _instrument(self, name, method):
        def call(*args, **kwargs):
            depth = getattr(self._tls, "depth", 0)
            self._tls.depth = depth + 1
            start = self.timer()
            try:
                with self._lock:
                    self.calls[name] += 1
                delay = self.latency.get(name)
                if delay:
                    self.sleep(delay)
                fault = self._take_fault(name, args)
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    if isinstance(fault.error, BaseException):
                        raise fault.error
                    raise _ERR(fault.error)
                return method(*args, **kwargs)
            finally:
                self._tls.depth = depth
                if depth == 0:  # aliases call their versioned twin: count the time once
                    with self._lock:
                        self.call_time += self.timer() - start

        call.__name__ = call.__qualname__ = name
        return call

    def _enter(self, symbol: str, needs_init: bool = True) -> None:
        # Same order as the binding: library loaded, then symbol lookup, then the C call's checks.
        if not self._loaded:
            raise _ERR(real.NVML_ERROR_UNINITIALIZED)
        if symbol in self.missing_symbols:
            raise _ERR(real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if needs_init and not self.initialized:
            raise _ERR(real.NVML_ERROR_UNINITIALIZED)

    def _device(self, handle, name: str, symbol: str | None = None):
        """Check a call on `handle`; return (gpu, mig or None)."""
        self._enter(symbol or name)
        if not isinstance(handle, FakeHandle):
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        gpu, mig = handle._gpu, handle._mig
        if gpu.lost:
            raise _ERR(real.NVML_ERROR_GPU_IS_LOST)
        if gpu.unknown:
            raise _ERR(real.NVML_ERROR_UNKNOWN)
        if name in gpu.not_supported or (mig is not None and name not in _MIG_OK):
            raise _ERR(real.NVML_ERROR_NOT_SUPPORTED)
        if name in gpu.no_permission:
            raise _ERR(real.NVML_ERROR_NO_PERMISSION)
        return gpu, mig

    def _system(self, name, reading):
        def call():
            self._enter(name)
            return reading(self)

        return call

    def _field(self, name, attr):
        return lambda handle: getattr(self._device(handle, name)[0], attr)

    def _process_list(self, name):
        def call(handle):
            gpu, mig = self._device(handle, name)
            if mig is None and gpu.mig_enabled and gpu.mig_parent_lists_privileged:
                raise _ERR(real.NVML_ERROR_NO_PERMISSION)
            out = []
            if "Graphics" in name:
                listed = gpu.graphics_processes
            else:
                listed = gpu.mps_processes if "MPS" in name else gpu.processes
            for p in list(listed):
                ids = (p.gpu_instance_id, p.compute_instance_id)
                if mig is not None and ids != (mig.gpu_instance_id, mig.compute_instance_id):
                    continue  # a MIG handle sees only the processes in its own instance
                # Built from the real struct, as the binding does, so the attribute set matches.
                obj = real.nvmlStructToFriendlyObject(
                    real.c_nvmlProcessInfo_v2_t(p.pid, p.used_memory or 0, *ids)
                )
                obj.usedGpuMemory = p.used_memory
                out.append(obj)
            return out

        return call

    def _alias(self, handle, name: str):
        # The binding's @throwOnVersionMismatch turns FunctionNotFound into a different exception.
        try:
            self._device(handle, name, name + "_v3")  # honours not_supported keyed by the alias
            return getattr(self.module, name + "_v3")(handle)
        except real.NVMLError_FunctionNotFound:
            raise real.NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib "
                "version."
            ) from None

    def nvmlInitWithFlags(self, flags):
        if self.init_error == real.NVML_ERROR_LIBRARY_NOT_FOUND:
            raise _ERR(self.init_error)
        self._loaded = True
        self._enter("nvmlInitWithFlags", needs_init=False)
        if self.init_error is not None:
            raise _ERR(self.init_error)
        with self._lock:
            if self._refcount == 0:
                self._count_at_init = len(self.gpus)
            self._refcount += 1

    def nvmlInit(self):
        self.module.nvmlInitWithFlags(0)

    def nvmlShutdown(self):
        self._enter("nvmlShutdown")
        with self._lock:
            self._refcount -= 1
            if self._refcount == 0:
                self._count_at_init = None

    def nvmlErrorString(self, result):
        self._enter("nvmlErrorString", needs_init=False)
        return _ERR._errcode_to_string.get(result, "Unknown Error")

    def nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount_v2")
        return self._counted

    @property
    def _counted(self) -> int:
        # NVML enumerates the GPUs at nvmlInit: one the driver brings up later needs a new init.
        return self._count_at_init if self._count_at_init is not None else len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._enter("nvmlDeviceGetHandleByIndex_v2")
        if not 0 <= index < len(self.gpus):
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:  # NVML documents GPU_IS_LOST for this call too
            raise _ERR(real.NVML_ERROR_GPU_IS_LOST)
        return FakeHandle(gpu)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self._enter("nvmlDeviceGetHandleByUUID")
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return FakeHandle(gpu)
            for mig in gpu.mig_devices:
                if mig is not None and gpu.mig_enabled and mig.uuid == uuid:
                    return FakeHandle(gpu, mig)
        raise _ERR(real.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle):
        gpu, _ = self._device(handle, "nvmlDeviceGetIndex")
        return next(i for i, g in enumerate(self.gpus) if g is gpu)  # dataclass == is by value

    def nvmlDeviceGetName(self, handle):
        gpu, mig = self._device(handle, "nvmlDeviceGetName")
        return gpu.name if mig is None else f"{gpu.name} MIG {mig.profile}"

    def nvmlDeviceGetUUID(self, handle):
        gpu, mig = self._device(handle, "nvmlDeviceGetUUID")
        return (mig or gpu).uuid

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        symbol = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        gpu, mig = self._device(handle, "nvmlDeviceGetMemoryInfo", symbol)
        total, used = (mig or gpu).memory_total, (mig or gpu).memory_used
        reserved = 0 if mig is not None else gpu.memory_reserved
        free = max(0, total - used - reserved)
        if not version:  # v1 counts the driver's reserved memory as used
            return real.c_nvmlMemory_t(total=total, free=free, used=used + reserved)
        return real.c_nvmlMemory_v2_t(
            version=version, total=total, reserved=reserved, free=free, used=used
        )

    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu, _ = self._device(handle, "nvmlDeviceGetUtilizationRates")
        return real.c_nvmlUtilization_t(gpu=gpu.util_gpu, memory=gpu.util_memory)

    def nvmlDeviceGetTemperature(self, handle, sensor, _name="nvmlDeviceGetTemperature"):
        gpu, _ = self._device(handle, _name)
        if sensor != real.NVML_TEMPERATURE_GPU:
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetTemperatureV(self, handle, sensor, version=real.nvmlTemperature_v1):
        if version != real.nvmlTemperature_v1:  # checked in Python before any C call
            raise _ERR(real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return self.nvmlDeviceGetTemperature(handle, sensor, "nvmlDeviceGetTemperatureV")

    def nvmlDeviceGetFanSpeed(self, handle):
        gpu, _ = self._device(handle, "nvmlDeviceGetFanSpeed")
        if gpu.fan is None:
            raise _ERR(real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.fan

    def _clock(self, handle, name, clock_type, sm_field, mem_field):
        gpu, _ = self._device(handle, name)
        if clock_type in (real.NVML_CLOCK_GRAPHICS, real.NVML_CLOCK_SM):
            return getattr(gpu, sm_field)
        if clock_type == real.NVML_CLOCK_MEM:
            return getattr(gpu, mem_field)
        raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetClockInfo(self, handle, type):
        return self._clock(handle, "nvmlDeviceGetClockInfo", type, "clocks_sm", "clocks_mem")

    def nvmlDeviceGetMaxClockInfo(self, handle, type):
        name = "nvmlDeviceGetMaxClockInfo"
        return self._clock(handle, name, type, "max_clock_sm", "max_clock_mem")

    def nvmlDeviceGetPcieThroughput(self, device, counter):
        gpu, _ = self._device(device, "nvmlDeviceGetPcieThroughput")
        if counter == real.NVML_PCIE_UTIL_TX_BYTES:
            return gpu.pcie_tx_kb
        if counter == real.NVML_PCIE_UTIL_RX_BYTES:
            return gpu.pcie_rx_kb
        raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetFieldValues(self, handle, fieldIds):
        """The binding's result: a ctypes array of the real struct, one per requested field."""
        gpu, _ = self._device(handle, "nvmlDeviceGetFieldValues")
        values = (real.c_nvmlFieldValue_t * len(fieldIds))()
        stamp = int(self.timer() * 1e6)
        for slot, requested in zip(values, fieldIds):
            field_id, scope = requested if isinstance(requested, tuple) else (requested, 0)
            slot.fieldId, slot.scopeId, slot.timestamp = field_id, scope, stamp
            answer = self._field_value(gpu, field_id, scope)
            if isinstance(answer, int):  # that link's error, in its slot
                slot.nvmlReturn = answer
                continue
            if answer is None:
                slot.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
                continue
            slot.nvmlReturn = real.NVML_SUCCESS
            kind, value = answer
            slot.valueType = kind
            setattr(slot.value, "uiVal" if kind == real.NVML_VALUE_TYPE_UNSIGNED_INT else "ullVal", value)
        return values

    @staticmethod
    def _field_value(gpu: FakeGpu, field_id: int, scope: int) -> tuple[int, int] | int | None:
        if not gpu.nvlink:
            return None
        if field_id == real.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return real.NVML_VALUE_TYPE_UNSIGNED_INT, len(gpu.nvlink)
        if scope >= len(gpu.nvlink):
            return None
        link = gpu.nvlink[scope]
        data = (real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)
        if link.error is not None and field_id in data:
            return link.error
        if field_id == real.NVML_FI_DEV_NVLINK_GET_STATE:
            state = real.NVML_NVLINK_STATE_ACTIVE if link.active else real.NVML_NVLINK_STATE_INACTIVE
            return real.NVML_VALUE_TYPE_UNSIGNED_INT, state
        if field_id == real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX:
            return real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, link.tx_kib
        if field_id == real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX:
            return real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, link.rx_kib
        return None

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self._alias(handle, "nvmlDeviceGetComputeRunningProcesses")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return self._alias(handle, "nvmlDeviceGetGraphicsRunningProcesses")

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle):
        # The binding's plain name calls _v3 itself, with no version-mismatch wrapper.
        return self.module.nvmlDeviceGetMPSComputeRunningProcesses_v3(handle)

    def nvmlDeviceGetProcessUtilization(self, handle, timeStamp):
        gpu, _ = self._device(handle, "nvmlDeviceGetProcessUtilization")
        now_us = int(time.time() * 1e6)
        if not gpu.process_utilization or timeStamp >= now_us:
            raise _ERR(real.NVML_ERROR_NOT_FOUND)  # NVML's answer when no sample is newer
        return [
            real.c_nvmlProcessUtilizationSample_t(pid=pid, timeStamp=now_us, smUtil=sm, memUtil=mem)
            for pid, sm, mem in list(gpu.process_utilization)
        ]

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        gpu, _ = self._device(handle, "nvmlDeviceGetCudaComputeCapability")
        return tuple(gpu.compute_capability)

    def nvmlDeviceGetComputeMode(self, handle):
        gpu, _ = self._device(handle, "nvmlDeviceGetComputeMode")
        return gpu.compute_mode

    def nvmlDeviceGetMigMode(self, device):
        gpu, _ = self._device(device, "nvmlDeviceGetMigMode")
        return [int(gpu.mig_enabled), int(gpu.mig_enabled)]

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        gpu, _ = self._device(device, "nvmlDeviceGetMaxMigDeviceCount")
        return max(gpu.max_mig_devices, len(gpu.mig_devices)) if gpu.mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        gpu, _ = self._device(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        limit = max(gpu.max_mig_devices, len(gpu.mig_devices)) if gpu.mig_enabled else 0
        if not 0 <= index < limit:
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        slot = gpu.mig_devices[index] if index < len(gpu.mig_devices) else None
        if slot is None:
            raise _ERR(real.NVML_ERROR_NOT_FOUND)
        return FakeHandle(gpu, slot)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice):
        gpu, mig = self._device(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if mig is None:
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(gpu)

    def nvmlDeviceIsMigDeviceHandle(self, device):
        _, mig = self._device(device, "nvmlDeviceIsMigDeviceHandle")
        # The binding returns the c_uint itself, not its .value: truthy, but never == 1.
        return ctypes.c_uint(int(mig is not None))

    def nvmlDeviceGetGpuInstanceId(self, device):
        _, mig = self._device(device, "nvmlDeviceGetGpuInstanceId")
        if mig is None:
            raise _ERR(real.NVML_ERROR_NOT_SUPPORTED)
        return mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device):
        _, mig = self._device(device, "nvmlDeviceGetComputeInstanceId")
        if mig is None:
            raise _ERR(real.NVML_ERROR_NOT_SUPPORTED)
        return mig.compute_instance_id

"""GPU readings from NVIDIA's NVML through nvidia-ml-py (``pynvml``)."""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from jupyter_tfgpu.gpu.backend import BackendUnavailable, DeviceInfo, GpuLost, MigInstance
from jupyter_tfgpu.gpu.group_readings import (
    ClockSpeeds,
    FastReading,
    InterconnectReading,
    SlowReading,
)
from jupyter_tfgpu.gpu.nvlink import NvlinkCounters
from jupyter_tfgpu.gpu.readings import (
    MemoryReading,
    NvlinkReading,
    PcieReading,
    PowerReading,
    ProcessReading,
    ProcessUtilization,
    UtilizationReading,
)


# -- errors and versioned symbols -----------------------------------------------------------------

# Errors that mean "this field is not available here", not "something broke".
UNAVAILABLE = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
# Errors that mean the GPU itself stopped answering.
LOST = ("NVMLError_GpuIsLost", "NVMLError_Unknown")
# Any other error (a timeout, a driver reloading, a bug in the binding) is neither: it nulls the
# one field and says why, and the field is asked again when its group is next due (``failed``).


class FactUnreadable(GpuLost):
    """A static fact of one GPU could not be read (a timeout, say): the GPU is opened again
    later rather than kept with facts read half-way."""


def load_pynvml() -> Any:
    """Import pynvml at open time, so a missing package is a reason, not an ImportError."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise BackendUnavailable(f"nvidia-ml-py is not installed ({err})") from err


class NvmlCalls:
    """The pynvml module and the one error policy for its calls: what an error means, and which
    variant of a versioned symbol this driver has (probed once, then kept)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.memory_v2: bool | None = None  # whether memory info v2 works; None until probed

    def matches(self, err: BaseException, names: tuple[str, ...]) -> bool:
        """Whether ``err`` is one of the binding's error classes named."""
        return any(
            isinstance(err, cls)
            for cls in (getattr(self.nvml, name, None) for name in names)
            if isinstance(cls, type)
        )

    def describe(self, err: BaseException) -> str:
        """NVML's own words for its errors ("Timeout"); the type as well for anything else."""
        nvml_error = getattr(self.nvml, "NVMLError", None)
        if isinstance(nvml_error, type) and isinstance(err, nvml_error):
            return str(err)
        return f"{type(err).__name__}: {err}"

    def optional(
        self,
        index: int,
        fn: Callable[..., Any],
        *args: Any,
        errors: dict[str, str] | None = None,
        field: str = "",
    ) -> Any:
        """Call one NVML query; every failure goes through ``failed``."""
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - sorted out by failed
            return self.failed(index, err, getattr(fn, "__name__", "NVML call"), errors, field)

    def failed(
        self, index: int, err: Exception, call: str, errors: dict[str, str] | None, field: str
    ) -> None:
        """The one error policy for a query of one GPU.

        Unsupported -> ``None``; lost GPU -> ``GpuLost``; anything else -> ``None`` with the
        reason in ``errors[field]``, or, while a GPU's facts are read (``errors`` None),
        ``GpuLost``: facts read half-way would stick, so the GPU is opened again later.
        """
        if self.matches(err, UNAVAILABLE):
            return None
        if self.matches(err, LOST):
            raise GpuLost(index, str(err)) from err
        reason = f"{call}: {self.describe(err)}"
        if errors is None:
            raise FactUnreadable(index, reason) from err
        errors[field] = reason
        return None

    def mismatch_errors(self) -> tuple[type[BaseException], ...]:
        """What the binding raises for a symbol the library lacks (either class, by version)."""
        mismatch = getattr(self.nvml, "NVMLLibraryMismatchError", None)
        return (self.nvml.NVMLError, mismatch) if isinstance(mismatch, type) else (self.nvml.NVMLError,)

    def versioned(self, base: str) -> list[Callable[[Any], Any]]:
        """Newest variant first (v3, v2, then the plain name), skipping ones the binding lacks."""
        names = [f"{base}_v3", f"{base}_v2", base]
        return [getattr(self.nvml, n) for n in names if hasattr(self.nvml, n)]

    def memory(
        self,
        index: int,
        handle: Any,
        errors: dict[str, str] | None = None,
        field: str = "memory",
    ) -> MemoryReading | None:
        """Memory with the v2 struct (which separates driver-reserved memory) where present."""
        nvml = self.nvml
        if self.memory_v2 is not False and hasattr(nvml, "nvmlMemory_v2"):
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
            except Exception as err:  # noqa: BLE001 - sorted out below or by failed
                if not self.matches(
                    err, ("NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch")
                ):
                    return self.failed(index, err, "nvmlDeviceGetMemoryInfo_v2", errors, field)
                self.memory_v2 = False
            else:
                self.memory_v2 = True
                return MemoryReading(info.total, info.used, info.free, info.reserved)
        info = self.optional(index, nvml.nvmlDeviceGetMemoryInfo, handle, errors=errors, field=field)
        if info is None:
            return None
        return MemoryReading(info.total, info.used, info.free, None)

    def field_values(self, index: int, handle: Any, ids: list[Any]) -> list[Any] | None:
        """One nvmlDeviceGetFieldValues call; None where the driver cannot answer it at all."""
        fn = getattr(self.nvml, "nvmlDeviceGetFieldValues", None)
        if fn is None:
            return None
        try:
            return list(fn(handle, ids))
        except Exception as err:  # noqa: BLE001 - sorted out by failed (lost GPU raises)
            self.failed(index, err, "nvmlDeviceGetFieldValues", {}, "nvlink")
            return None

    def value(self, sample: Any) -> int | float | None:
        """A field value's number, by its type; None when the field did not answer."""
        nvml = self.nvml
        if sample.nvmlReturn != nvml.NVML_SUCCESS:
            return None
        name = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        }.get(sample.valueType, "siVal")
        return getattr(sample.value, name)


# -- static facts and MIG instances ---------------------------------------------------------------

# A MIG GPU's instances are enumerated again this often (and when a process names one not
# known), so slices made or destroyed while the server runs are seen.
MIG_REFRESH_SECONDS = 60.0


class DeviceFacts:
    """Each GPU's handle and static facts, read at open and again for a GPU not opened (or
    lost); a MIG GPU's instances, enumerated again when they change."""

    def __init__(self, calls: NvmlCalls, count: int, clock: Callable[[], float]) -> None:
        self.calls = calls
        self._clock = clock  # times the MIG re-enumeration
        self.handles: list[Any] = [None] * count
        self.infos = [
            DeviceInfo(index=i, uuid="", name="unavailable", memory_total=None, lost=True)
            for i in range(count)
        ]
        # Per GPU: its MIG devices' handles by slot, and (GPU instance id, compute instance id)
        # -> MIG slot.
        self.mig_handles: dict[int, list[tuple[int, Any]]] = {}
        self.mig_slots: dict[int, dict[tuple[int, int], int]] = {}
        # When each GPU's MIG instances were last enumerated, and the (GPU instance, compute
        # instance) ids a process named that the last enumeration did not find.
        self._mig_read_at: dict[int, float] = {}
        self._mig_unresolved: dict[int, set[tuple[Any, Any]]] = {}

    def reopen(self, index: int) -> DeviceInfo:
        """Read one GPU's handle and facts again; a GPU that fails is lost, with the reason."""
        calls = self.calls
        try:
            handle = calls.nvml.nvmlDeviceGetHandleByIndex(index)
            self.handles[index] = handle
            info = self._read_info(index, handle)
        except Exception as err:  # noqa: BLE001 - any failure leaves this GPU, not the others
            if isinstance(err, (GpuLost, BackendUnavailable)):
                reason = err.reason
            elif calls.matches(err, LOST + UNAVAILABLE):
                reason = str(err)  # a GPU that is gone, or not ours to read
            else:
                reason = f"nvmlDeviceGetHandleByIndex: {calls.describe(err)}"
            self.handles[index] = None
            self.mig_handles.pop(index, None)
            self.mig_slots.pop(index, None)
            info = DeviceInfo(
                index=index, uuid="", name="unavailable", memory_total=None, lost=True,
                lost_reason=f"the device could not be opened: {reason}",
            )  # fmt: skip
        self.infos[index] = info
        return info

    def handle(self, index: int) -> Any:
        """The GPU's handle; ``GpuLost`` for a GPU that could not be opened."""
        handle = self.handles[index]
        if handle is None:
            raise GpuLost(index, "the device could not be opened")
        return handle

    def _read_info(self, index: int, handle: Any) -> DeviceInfo:
        """Every static fact of one GPU; any failure but "not supported" raises GpuLost."""
        calls = self.calls
        nvml = calls.nvml
        memory = calls.memory(index, handle)
        name = calls.optional(index, nvml.nvmlDeviceGetName, handle) or f"GPU {index}"
        uuid = calls.optional(index, nvml.nvmlDeviceGetUUID, handle) or ""
        limit = calls.optional(index, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        max_clocks = {
            "sm": calls.optional(index, nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM),
            "memory": calls.optional(
                index, nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM
            ),
        }
        mig_mode, instances = self._read_mig(index, handle)
        links, no_links = self._read_nvlink_count(index, handle)
        return DeviceInfo(
            index=index,
            uuid=uuid,
            name=name,
            memory_total=memory.total if memory else None,
            power_limit=limit / 1000 if limit is not None else None,
            max_clocks=max_clocks,
            mig_mode=mig_mode,
            mig_instances=tuple(instances),
            nvlink_links=links,
            nvlink_reason=no_links,
        )

    def _read_mig(self, index: int, handle: Any) -> tuple[bool | None, list[MigInstance]]:
        """MIG mode and instances (handles and id -> slot map too); failures raise GpuLost."""
        calls = self.calls
        nvml = calls.nvml
        self._mig_read_at[index] = self._clock()
        self._mig_unresolved.pop(index, None)
        mode = calls.optional(index, getattr(nvml, "nvmlDeviceGetMigMode", lambda h: None), handle)
        if mode is None or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            self.mig_handles.pop(index, None)
            self.mig_slots.pop(index, None)
            return (None if mode is None else False), []
        slots = calls.optional(index, nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
        instances: list[MigInstance] = []
        handles: list[tuple[int, Any]] = []
        by_ids: dict[tuple[int, int], int] = {}
        for slot in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except Exception as err:  # noqa: BLE001 - sorted out by failed
                if calls.matches(err, ("NVMLError_NotFound",) + UNAVAILABLE):
                    continue  # empty slot
                calls.failed(index, err, "nvmlDeviceGetMigDeviceHandleByIndex", None, "")
            memory = calls.memory(index, mig)
            instance = MigInstance(
                index=slot,
                uuid=calls.optional(index, nvml.nvmlDeviceGetUUID, mig) or "",
                gpu_instance_id=calls.optional(index, nvml.nvmlDeviceGetGpuInstanceId, mig),
                compute_instance_id=calls.optional(index, nvml.nvmlDeviceGetComputeInstanceId, mig),
                memory_total=memory.total if memory else None,
            )
            instances.append(instance)
            handles.append((slot, mig))
            if instance.gpu_instance_id is not None and instance.compute_instance_id is not None:
                by_ids[(instance.gpu_instance_id, instance.compute_instance_id)] = slot
        # Set together, at the end: a failure half-way leaves the last complete enumeration.
        self.mig_handles[index], self.mig_slots[index] = handles, by_ids
        return True, instances

    def mig_due(self, index: int) -> bool:
        """Whether a MIG GPU's instances were enumerated ``MIG_REFRESH_SECONDS`` ago or more."""
        last = self._mig_read_at.get(index)
        return last is None or self._clock() - last >= MIG_REFRESH_SECONDS

    def refresh_mig(self, index: int, unknown: set[tuple[Any, Any]] | None = None) -> bool:
        """Enumerate a GPU's MIG instances again (created or destroyed since); False when it
        was not tried (these unknown ids were already looked for) or failed."""
        if unknown is not None and unknown <= self._mig_unresolved.get(index, set()):
            return False  # looked for already: the slow cadence looks again
        info = self.infos[index]
        try:
            mode, instances = self._read_mig(index, self.handle(index))
        except FactUnreadable:
            return False  # a timeout, say: keep the last enumeration, look again later
        if unknown:
            self._mig_unresolved[index] = unknown - set(self.mig_slots.get(index, {}))
        if (mode, tuple(instances)) != (info.mig_mode, info.mig_instances):
            self.infos[index] = replace(info, mig_mode=mode, mig_instances=tuple(instances))
        return True

    def _read_nvlink_count(self, index: int, handle: Any) -> tuple[int, str | None]:
        """How many NVLink links the GPU has, or 0 and why there are none."""
        calls = self.calls
        field = getattr(calls.nvml, "NVML_FI_DEV_NVLINK_LINK_COUNT", None)
        fn = getattr(calls.nvml, "nvmlDeviceGetFieldValues", None)
        # A timeout here fails the GPU's open (and it is opened again), not NVLink for good.
        values = None if field is None or fn is None else calls.optional(index, fn, handle, [field])
        if not values:
            return 0, "this driver reports no NVLink figures"
        count = calls.value(values[0])
        if not count:
            return 0, "this GPU has no NVLink"
        return int(count), None


# -- process lists --------------------------------------------------------------------------------

class ProcessLists:
    """Each GPU's processes: its compute and graphics lists (the newest variant of each that
    this driver has), per MIG instance where NVML asks for that, and per-process utilization."""

    def __init__(self, calls: NvmlCalls, facts: DeviceFacts) -> None:
        self.calls = calls
        self.facts = facts
        # Versioned symbols are probed once, then the working variant is kept.
        self.readers: dict[str, list[Callable[[Any], Any]]] = {
            "compute": calls.versioned("nvmlDeviceGetComputeRunningProcesses"),
            "graphics": calls.versioned("nvmlDeviceGetGraphicsRunningProcesses"),
        }
        # Per GPU: the timestamp of the last utilization sample read (the next read asks since).
        self._util_since: dict[int, int] = {}
        # Where a MIG GPU's processes are listed: "parent" (one list with instance ids, for a
        # caller NVML allows) or "instances" (one list per slot); absent until known.
        self._mig_source: dict[int, str] = {}

    def read(self, index: int) -> tuple[ProcessReading, ...]:
        """Compute and graphics processes, one row per PID, with per-process utilization."""
        facts = self.facts
        handle = facts.handle(index)
        if facts.infos[index].mig_mode is not None and facts.mig_due(index):
            facts.refresh_mig(index)  # instances made or destroyed with no process on them
        by_pid: dict[int, ProcessReading] = {}
        if facts.infos[index].mig_mode:
            self._read_mig(index, handle, by_pid)
        else:
            self._collect(index, handle, by_pid, lambda proc: None)
        utilization = self._utilization(index, handle)
        return tuple(row._replace(utilization=utilization.get(pid)) for pid, row in by_pid.items())

    def _list(self, index: int, kind: str, handle: Any) -> list[Any] | None:
        """Run the newest process-list variant that works, remembering the choice."""
        calls = self.calls
        readers = self.readers[kind]
        while readers:
            try:
                return readers[0](handle)
            except calls.mismatch_errors() as err:
                # The unversioned binding raises NVMLLibraryMismatchError (not an NVMLError)
                # when its symbol is missing; both mean "try the older variant".
                missing = not isinstance(err, calls.nvml.NVMLError) or calls.matches(
                    err, ("NVMLError_FunctionNotFound",)
                )
                if missing and len(readers) > 1:
                    readers.pop(0)
                    continue
                if missing or calls.matches(err, UNAVAILABLE):
                    return None
                if calls.matches(err, LOST):
                    raise GpuLost(index, str(err)) from err
                raise
        return None

    def _read_mig(self, index: int, handle: Any, by_pid: dict[int, ProcessReading]) -> None:
        """A MIG GPU: one list from the parent where NVML allows it, else one per instance.

        NVML answers the parent handle with every instance's processes (and their instance ids)
        only for a caller with the privilege; others get NoPermission and must ask each MIG
        device. An empty parent list proves nothing until the parent has once named instances,
        so until then the instances are asked as well. A process in an instance made after the
        last enumeration names ids not known yet: the instances are enumerated again.
        """
        facts = self.facts
        source = self._mig_source.get(index)
        if source != "instances":
            found: dict[int, ProcessReading] = {}
            ids_of: dict[int, tuple[Any, Any]] = {}

            def slot_of(proc: Any) -> int | None:
                ids = (getattr(proc, "gpuInstanceId", None), getattr(proc, "computeInstanceId", None))
                ids_of[proc.pid] = ids
                return facts.mig_slots.get(index, {}).get(ids)

            answered = self._collect(index, handle, found, slot_of)
            unplaced = {pid: ids_of[pid] for pid, row in found.items() if row.mig is None}
            unknown = {ids for ids in unplaced.values() if self._names_instance(ids)}
            if unknown and facts.refresh_mig(index, unknown):
                slots = facts.mig_slots.get(index, {})
                for pid, ids in unplaced.items():
                    found[pid] = found[pid]._replace(mig=slots.get(ids))
            # Records without instance ids cannot be placed from the parent's list; ids that
            # no enumeration finds stay on the GPU (mig null) rather than vanish.
            no_ids = any(not self._names_instance(ids) for ids in unplaced.values())
            if answered and not no_ids and (found or source == "parent"):
                self._mig_source[index] = "parent"
                by_pid.update(found)
                return
            if not answered or no_ids:
                # NoPermission, or records without instance ids: ask each instance from now on.
                self._mig_source[index] = "instances"
        for slot, target in facts.mig_handles.get(index, ()):
            self._collect(index, target, by_pid, lambda proc, slot=slot: slot)
        if by_pid and index not in self._mig_source:
            self._mig_source[index] = "instances"  # the parent's empty list was wrong

    def _names_instance(self, ids: tuple[Any, Any]) -> bool:
        """Whether a process record's (GPU instance, compute instance) ids name an instance."""
        none = getattr(getattr(self.calls.nvml, "NVML_VALUE_NOT_AVAILABLE_uint", None), "value", None)
        return all(isinstance(i, int) and i != none for i in ids)

    def _collect(
        self,
        index: int,
        target: Any,
        by_pid: dict[int, ProcessReading],
        slot_of: Callable[[Any], int | None],
    ) -> bool:
        """Add the compute and graphics lists of one handle; False if the compute list is refused."""
        answered = False
        for kind in ("compute", "graphics"):
            procs = self._list(index, kind, target)
            if procs is None:
                continue
            answered = answered or kind == "compute"
            for proc in procs:
                slot = slot_of(proc)  # asked for every record: it notes the record's ids
                row = by_pid.get(proc.pid)
                if row is None:
                    row = ProcessReading(proc.pid, None, kind, slot)
                elif row.type != kind:
                    row = row._replace(type="compute+graphics")
                used = proc.usedGpuMemory
                if used is not None:
                    # A PID seen in both lists reports the same allocation twice.
                    row = row._replace(used_memory=max(row.used_memory or 0, used))
                by_pid[proc.pid] = row
        return answered

    def _utilization(self, index: int, handle: Any) -> dict[int, ProcessUtilization]:
        calls = self.calls
        fn = getattr(calls.nvml, "nvmlDeviceGetProcessUtilization", None)
        if fn is None:
            return {}
        since = self._util_since.get(index, 0)
        try:
            samples = fn(handle, since)
        except Exception as err:  # noqa: BLE001 - per-process figures are extras
            if calls.matches(err, LOST):
                raise GpuLost(index, str(err)) from err
            return {}  # NotFound (no samples yet), NotSupported, a timeout, ...
        latest: dict[int, Any] = {}
        for sample in samples:
            if sample.pid not in latest or sample.timeStamp >= latest[sample.pid].timeStamp:
                latest[sample.pid] = sample
        if latest:
            self._util_since[index] = max(s.timeStamp for s in latest.values())
        return {pid: ProcessUtilization(s.smUtil, s.memUtil) for pid, s in latest.items()}


# -- the backend: life cycle and per-sample readings ----------------------------------------------

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

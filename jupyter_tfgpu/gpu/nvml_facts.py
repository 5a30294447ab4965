"""Each NVIDIA GPU's handle and static facts, and a MIG GPU's instances, read through NVML."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from jupyter_tfgpu.gpu.backend import BackendUnavailable, DeviceInfo, GpuLost, MigInstance
from jupyter_tfgpu.gpu.nvml_calls import LOST, UNAVAILABLE, FactUnreadable, NvmlCalls

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

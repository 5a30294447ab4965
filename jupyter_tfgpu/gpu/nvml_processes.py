"""The processes on each NVIDIA GPU, read through NVML: one row per PID, on its MIG instance.

Under NVIDIA MPS, NVML's compute list names the MPS server in place of its clients; the clients
are in its MPS list (``nvmlDeviceGetMPSComputeRunningProcesses``, "all of the memory used by the
application" per client). That list is read only on a GPU whose compute list holds an MPS server,
found by its process name, so a GPU without MPS costs no extra call. An MPS server whose process
this server cannot see (another PID namespace, as in a Kubernetes pod) is not found: its clients
are then not listed, and kernels are matched by their own reports as before.
"""

from __future__ import annotations

from typing import Any, Callable

import psutil

from jupyter_tfgpu.gpu.backend import GpuLost
from jupyter_tfgpu.gpu.nvml_calls import LOST, UNAVAILABLE, NvmlCalls
from jupyter_tfgpu.gpu.nvml_facts import DeviceFacts
from jupyter_tfgpu.gpu.readings import ProcessReading, ProcessUtilization


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
            "mps": calls.versioned("nvmlDeviceGetMPSComputeRunningProcesses"),
        }
        # Per GPU: PID -> whether it is an MPS server, for the compute PIDs of its last round
        self._mps_servers: dict[int, dict[int, bool]] = {}
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
            self._collect_mps(index, handle, by_pid)
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
        not_available = getattr(self.calls.nvml, "NVML_VALUE_NOT_AVAILABLE_uint", None)
        none = getattr(not_available, "value", None)
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

    def _collect_mps(self, index: int, handle: Any, by_pid: dict[int, ProcessReading]) -> None:
        """Mark the MPS server among the compute processes and add its clients' rows."""
        known, seen = self._mps_servers.get(index, {}), {}
        self._mps_servers[index] = seen
        servers = []
        for pid, row in by_pid.items():
            if row.type in ("compute", "compute+graphics"):
                is_server = known[pid] if pid in known else _is_mps_server(pid)
                seen[pid] = is_server
                if is_server:
                    servers.append(pid)
        if not servers:
            return
        for pid in servers:
            by_pid[pid] = by_pid[pid]._replace(mps="server")
        for proc in self._list(index, "mps", handle) or ():
            # A client some drivers list in the compute list too is one row: the MPS list's.
            row = by_pid.get(proc.pid) or ProcessReading(proc.pid, None, "compute")
            used = proc.usedGpuMemory if proc.usedGpuMemory is not None else row.used_memory
            by_pid[proc.pid] = row._replace(used_memory=used, mps="client")

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


# NVIDIA's MPS server binary; Linux keeps the first 15 characters of a process's name.
MPS_SERVER_NAME = "nvidia-cuda-mps-server"


def _is_mps_server(pid: int) -> bool:
    """Whether a process is NVIDIA's MPS server, by its name; False where it cannot be seen."""
    try:
        name = psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return False
    return name.startswith(MPS_SERVER_NAME[:15])

"""The fake NVML's memory limits on cgroups (driver R615+): Set/Get with the binding's own structs.

``FakeMemoryLimits`` is mixed into ``FakeNvml``. Its two calls take what nvidia-ml-py 13.615.71's
take: a device handle and a ``c_nvmlSetMemoryLimits_v1_t`` / ``c_nvmlGetMemoryLimits_v1_t``
(nameSpace: the cgroup's folder as bytes, softLimit, hardLimit in bytes), passed by reference
(a non-ctypes argument fails as ``byref`` does). Limits are kept per (GPU, cgroup folder) and go
when the folder goes, as the driver's do when a cgroup is removed.

What the documentation says they refuse, they refuse: drivers before 615 lack the symbols
(``FunctionNotFound``), setting needs root (``NoPermission``; ``privileged`` stands for the
caller's euid), a folder without dmem files is ``NotFound``, a MIG handle ``NotSupported``. The
exact codes on a real driver are not documented (see docs/gpu-validation.md); these are NVML's
usual ones.

And the limit holds: ``allocate(gpu, pid, size)`` stands for a CUDA allocation by that process.
It is refused (``FakeOutOfMemory``, CUDA's out-of-memory error) when the process's cgroup, or a
cgroup above it, has a hard limit on that GPU that the memory its processes hold would pass.
Which cgroup a process is in comes from ``cgroup_of(pid)`` (by default /proc/<pid>/cgroup under
/sys/fs/cgroup); tests over a temporary tree set it to the tree's own answer.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

import pynvml as real

_ERR = real.NVMLError
SET = "nvmlDeviceSetMemoryLimits_v1"
GET = "nvmlDeviceGetMemoryLimits_v1"
NO_LIMIT = real.NVML_DEVICE_MEMORY_LIMIT_MAX
FIRST_DRIVER = 615  # the calls exist from the R615 driver
_CTYPES = (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData)


class FakeOutOfMemory(MemoryError):
    """An allocation the driver refused (CUDA_ERROR_OUT_OF_MEMORY): a hard limit would be passed."""


def proc_cgroup_of(pid: int, mount: str = "/sys/fs/cgroup") -> str | None:
    """The cgroup v2 folder of ``pid`` as /proc says; None when it is gone or not on v2."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return os.path.normpath(mount + line[3:])
    return None


def _driver_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


class FakeMemoryLimits:
    """The memory-limit calls of FakeNvml, and allocations they hold (see the module)."""

    # Set by FakeNvml.__init__; annotations for readers.
    privileged: bool  # the caller is root (euid 0): setting a limit needs it
    cgroup_of: Callable[[int], str | None]
    memory_limits: dict[tuple[int, str], tuple[int, int]]  # (GPU index, folder) -> (soft, hard)

    def _init_memory_limits(self, privileged: bool | None) -> None:
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.cgroup_of = proc_cgroup_of
        self.memory_limits = {}

    # -- the binding's calls -------------------------------------------------------------------

    def nvmlDeviceSetMemoryLimits_v1(self, device, limits):
        gpu, _ = self._limits_call(device, limits, SET, real.c_nvmlSetMemoryLimits_v1_t)
        if not self.privileged:
            raise _ERR(real.NVML_ERROR_NO_PERMISSION)
        folder = self._limits_folder(limits)
        soft, hard = int(limits.softLimit), int(limits.hardLimit)
        if soft > hard:
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        key = (self._index_of(gpu), folder)
        with self._lock:
            if (soft, hard) == (0, NO_LIMIT):  # NVML's documented way to clear them
                self.memory_limits.pop(key, None)
            else:
                self.memory_limits[key] = (soft, hard)

    def nvmlDeviceGetMemoryLimits_v1(self, device, limits):
        gpu, _ = self._limits_call(device, limits, GET, real.c_nvmlGetMemoryLimits_v1_t)
        folder = self._limits_folder(limits)
        index = self._index_of(gpu)
        with self._lock:
            soft, hard = self.memory_limits.get((index, folder), (0, NO_LIMIT))
        limits.softLimit, limits.hardLimit = soft, hard
        limits.currentUsed = self.cgroup_used(index, folder)

    # -- what the limits do --------------------------------------------------------------------

    def limit_on(self, gpu: int, folder: str) -> tuple[int, int] | None:
        """(soft, hard) set for a cgroup folder on a GPU now; None when none is."""
        folder = os.path.normpath(folder)
        self._forget_removed()
        with self._lock:
            return self.memory_limits.get((gpu, folder))

    def cgroup_used(self, gpu: int, folder: str) -> int:
        """Bytes the processes in ``folder`` and the cgroups below it hold on a GPU."""
        folder = os.path.normpath(folder)
        used = 0
        for process in list(self.gpus[gpu].processes):
            where = self.cgroup_of(process.pid)
            if where is not None and (where == folder or where.startswith(folder + os.sep)):
                used += process.used_memory or 0
        return used

    def allocate(self, gpu: int, pid: int, size: int) -> None:
        """Process ``pid`` allocates ``size`` bytes on GPU ``gpu``, unless a hard limit on its
        cgroup or one above it would be passed (``FakeOutOfMemory``)."""
        self._forget_removed()
        where = self.cgroup_of(pid)
        with self._lock:
            limits = dict(self.memory_limits)
        for (index, folder), (_, hard) in limits.items():
            if index != gpu or where is None:
                continue
            if where == folder or where.startswith(folder + os.sep):
                if self.cgroup_used(gpu, folder) + size > hard:
                    raise FakeOutOfMemory(
                        f"out of memory: {size} bytes would pass the hard limit of {hard} "
                        f"bytes on {folder}"
                    )
        state = self.gpus[gpu]
        with self._lock:
            process = next((p for p in state.processes if p.pid == pid), None)
            if process is None:
                from tests.fake_pynvml import FakeProcess  # noqa: PLC0415 - it imports this

                process = FakeProcess(pid=pid, used_memory=0)
                state.processes.append(process)
            process.used_memory = (process.used_memory or 0) + size
            state.memory_used += size

    # -- checks, in the order the binding and the driver make them -----------------------------

    def _limits_call(self, device, limits, name, struct):
        # The binding looks the symbol up first (absent before R615), then byref()s the struct.
        self._enter(name)
        if _driver_major(self.driver_version) < FIRST_DRIVER:
            raise _ERR(real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if not isinstance(limits, _CTYPES):
            kind = type(limits).__name__
            raise TypeError(f"byref() argument must be a ctypes instance, not '{kind}'")
        if not isinstance(limits, struct):  # C would read it as the wrong layout: a test's mistake
            raise TypeError(f"{name} takes a {struct.__name__}, not {type(limits).__name__}")
        self._forget_removed()
        return self._device(device, name)  # a MIG handle: NOT_SUPPORTED (not in _MIG_OK)

    def _limits_folder(self, limits) -> str:
        name = limits.nameSpace  # the binding's structs read c_char_p back as str
        if not name:
            raise _ERR(real.NVML_ERROR_INVALID_ARGUMENT)
        folder = os.path.normpath(name)
        if not os.path.isdir(folder) or not os.path.exists(os.path.join(folder, "dmem.max")):
            raise _ERR(real.NVML_ERROR_NOT_FOUND)
        return folder

    def _index_of(self, gpu) -> int:
        return next(i for i, g in enumerate(self.gpus) if g is gpu)

    def _forget_removed(self) -> None:
        # Removing a cgroup clears its limits.
        with self._lock:
            for key in [k for k in self.memory_limits if not os.path.isdir(k[1])]:
                del self.memory_limits[key]

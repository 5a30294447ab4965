"""What this machine offers the hard-caps mechanisms, found once as the server starts.

``detect`` reads it all in one go, in the hard-caps worker thread (it calls NVML, reads cgroup
and /proc files, looks along PATH): the GPUs' compute capability, MIG and compute modes, the
driver and whether it answers NVML's memory-limit calls, the MPS control binary, an MPS daemon
the server's environment points at (Kubernetes' device plugin), cgroup v2 and its ``dmem``
controller, and the server's user. ``modes.py`` turns these facts into what each mode lacks.
Every source is a field of ``Probe``, so tests give a temporary cgroup tree, a PATH and a uid.
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
# Where each source is, as module names a test may point elsewhere.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}


def _euid() -> int:
    return os.geteuid()


@dataclass(frozen=True)
class GpuFacts:
    """One GPU as the mechanisms need to know it."""

    index: int
    uuid: str
    name: str
    compute_capability: tuple[int, int] | None  # None: NVML could not say
    mig: bool | None  # MIG mode on; None: NVML could not say
    compute_mode: str | None  # a value of COMPUTE_MODES; None: NVML could not say


@dataclass(frozen=True)
class ExternalMps:
    """An MPS daemon the server's own environment points at (the Kubernetes device plugin's)."""

    pipe_directory: str
    control: str | None  # "socket", "file" (a fake, or not a daemon's), None: nothing there


@dataclass(frozen=True)
class CgroupFacts:
    """The cgroup hierarchy at ``root`` as the server's process sees it."""

    root: str
    v2: bool  # a cgroup v2 (unified) hierarchy is mounted at root
    own: str | None  # the server's own cgroup, relative to root ("/user.slice/..."); None: unknown
    dmem: bool  # the dmem controller is available to the server's own cgroup
    controllers: tuple[str, ...] = ()  # those the server's own cgroup may enable


@dataclass(frozen=True)
class MemoryLimitCalls:
    """Whether NVML's memory-limit calls are there: in the bindings, and in the driver."""

    bindings: bool  # nvidia-ml-py has nvmlDeviceSetMemoryLimits_v1
    driver: bool | None  # the driver answered nvmlDeviceGetMemoryLimits_v1; None: not asked
    detail: str | None = None  # why not, or how it answered


@dataclass(frozen=True)
class HostFacts:
    """What was found, and when (seconds since the epoch)."""

    checked_at: float
    driver: str | None = None
    gpus: tuple[GpuFacts, ...] = ()
    nvml_error: str | None = None  # why the GPUs could not be read through NVML
    mps_control: str | None = None  # the MPS control binary found on PATH
    external_mps: ExternalMps | None = None
    euid: int | None = None
    cgroup: CgroupFacts | None = None
    memory_limits: MemoryLimitCalls = MemoryLimitCalls(False, None)

    def to_json(self) -> dict[str, Any]:
        """As GET status shows it under ``hard_caps.host``."""
        data = asdict(self)
        data["gpus"] = [
            {**asdict(gpu), "compute_capability": _capability(gpu.compute_capability)}
            for gpu in self.gpus
        ]
        if self.cgroup is not None:
            data["cgroup"]["controllers"] = list(self.cgroup.controllers)
        return data


def _capability(value: tuple[int, int] | None) -> str | None:
    return f"{value[0]}.{value[1]}" if value else None


@dataclass
class Probe:
    """Where ``detect`` looks; every field can be replaced (tests give their own)."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    euid: Callable[[], int] = field(default_factory=lambda: _euid)
    cgroup_root: Path = field(default_factory=lambda: CGROUP_ROOT)
    proc_self_cgroup: Path = field(default_factory=lambda: PROC_SELF_CGROUP)
    nvml: Callable[[], Any] = field(default_factory=lambda: lambda: importlib.import_module("pynvml"))
    clock: Callable[[], float] = time.time

    def which(self, name: str) -> str | None:
        """``name`` as the server's PATH finds it."""
        return shutil.which(name, path=self.environ.get("PATH", os.defpath))


def detect(probe: Probe | None = None) -> HostFacts:
    """Everything the modes' requirements are judged by; blocking (NVML, files)."""
    probe = probe or Probe()
    cgroup = read_cgroup(probe.cgroup_root, probe.proc_self_cgroup)
    driver, gpus, nvml_error, limits = _read_nvml(probe, cgroup)
    return HostFacts(
        checked_at=probe.clock(),
        driver=driver,
        gpus=gpus,
        nvml_error=nvml_error,
        mps_control=probe.which(MPS_CONTROL),
        external_mps=_external_mps(probe.environ),
        euid=probe.euid(),
        cgroup=cgroup,
        memory_limits=limits,
    )


def _external_mps(environ: Mapping[str, str]) -> ExternalMps | None:
    pipe = environ.get(MPS_PIPE_ENV)
    if not pipe:
        return None
    try:
        mode = os.stat(os.path.join(pipe, "control")).st_mode
    except OSError:
        return ExternalMps(pipe, None)
    return ExternalMps(pipe, "socket" if stat.S_ISSOCK(mode) else "file")


def read_small(path: Path | str, most: int) -> str:
    """The first ``most`` bytes of a file the server's user (so a kernel) could have replaced,
    read without waiting: a FIFO or anything but a regular file, or a link, reads as nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as small:
        if not stat.S_ISREG(os.fstat(small.fileno()).st_mode):
            return ""
        return small.read(most).decode("utf-8", "replace")


def cgroup_v2_path(proc_self_cgroup: str) -> str | None:
    """A process's cgroup v2 path ("/a/b") from its /proc/<pid>/cgroup text; None when it has
    none (cgroup v1 only)."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def read_cgroup(root: Path, proc_self_cgroup: Path) -> CgroupFacts:
    """The cgroup v2 hierarchy at ``root``, the server's own cgroup in it, and dmem."""
    v2 = (root / "cgroup.controllers").is_file()
    try:
        own = cgroup_v2_path(proc_self_cgroup.read_text(encoding="utf-8"))
    except OSError:
        own = None
    controllers: tuple[str, ...] = ()
    if v2:
        where = root / own.lstrip("/") if own else root
        try:
            controllers = tuple((where / "cgroup.controllers").read_text().split())
        except OSError:
            controllers = ()
    return CgroupFacts(str(root), v2, own, "dmem" in controllers, controllers)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_nvml(
    probe: Probe, cgroup: CgroupFacts
) -> tuple[str | None, tuple[GpuFacts, ...], str | None, MemoryLimitCalls]:
    """(driver, GPUs, why they could not be read, the memory-limit calls), from NVML."""
    try:
        nvml = probe.nvml()
        nvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - no library, no driver: said, never raised
        return None, (), f"NVML could not be opened: {err}", MemoryLimitCalls(False, None)
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(_gpu(nvml, index, handle))
        first = nvml.nvmlDeviceGetHandleByIndex(0) if gpus else None
        return driver, tuple(gpus), None, _memory_limit_calls(nvml, first, cgroup)
    except Exception as err:  # noqa: BLE001
        return None, (), f"NVML could not read the GPUs: {err}", MemoryLimitCalls(False, None)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001,S110 - the answer is already had
            pass


def _ask(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception:  # noqa: BLE001 - "could not say" is an answer here
        return None


def _gpu(nvml: Any, index: int, handle: Any) -> GpuFacts:
    capability = _ask(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    try:
        mig: bool | None = bool(nvml.nvmlDeviceGetMigMode(handle)[0])
    except nvml.NVMLError_NotSupported:
        mig = False  # a GPU without MIG
    except Exception:  # noqa: BLE001
        mig = None
    mode = _ask(lambda: nvml.nvmlDeviceGetComputeMode(handle))
    return GpuFacts(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        compute_capability=tuple(capability) if capability else None,  # type: ignore[arg-type]
        mig=mig,
        compute_mode=COMPUTE_MODES.get(mode) if mode is not None else None,
    )


def _memory_limit_calls(nvml: Any, handle: Any, cgroup: CgroupFacts) -> MemoryLimitCalls:
    """Whether the bindings have the calls, and whether the driver answers the read one (asked
    of the server's own cgroup: reading needs no privilege, and an answer of any kind but
    "function not found" says the driver has them)."""
    if not hasattr(nvml, "nvmlDeviceSetMemoryLimits_v1"):
        return MemoryLimitCalls(
            False, None, "nvidia-ml-py has no nvmlDeviceSetMemoryLimits_v1 (13.615.71 or newer has)"
        )
    if handle is None:
        return MemoryLimitCalls(True, None, "no GPU to ask")
    limits = nvml.c_nvmlGetMemoryLimits_v1_t()
    limits.nameSpace = os.path.join(cgroup.root, (cgroup.own or "/").lstrip("/")).encode()
    try:
        nvml.nvmlDeviceGetMemoryLimits_v1(handle, limits)
    except nvml.NVMLError_FunctionNotFound:
        return MemoryLimitCalls(True, False, "the driver has no nvmlDeviceGetMemoryLimits_v1")
    except nvml.NVMLError as err:
        return MemoryLimitCalls(True, True, f"the driver answered the read of a limit: {err}")
    return MemoryLimitCalls(True, True, None)

"""The ``TFGPU.hard_caps`` modes: one row each, with what the mode needs and what holds caps in it.

A row names the mode, the mechanism its limits are (``policy.cap_enforcement.MECHANISMS``), its
paragraph of the admin manual (the setting's help is made from the rows), what it lacks on a
machine (``missing``: each lack one sentence an admin can act on, from ``host.HostFacts``) and
how its mechanism is made (``make``; None while this version has none). ``auto`` tries the rows
in order, ``off`` last. A mechanism adds itself by its module beside this one and its ``make``
(and ``manual``) in its row; nothing else here changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from jupyter_tfgpu.server.hardcaps.framework import FrameworkSettings
from jupyter_tfgpu.server.hardcaps.host import MPS_CONTROL, HostFacts
from jupyter_tfgpu.server.hardcaps.mechanism import Mechanism, MechanismContext
from jupyter_tfgpu.server.hardcaps.mps import make_mps
from jupyter_tfgpu.server.hardcaps.nvml_limits import NvmlMemoryLimits
from jupyter_tfgpu.server.hardcaps.verified import driver_branch

AUTO = "auto"
NOT_ON_A_GPU = "Not yet run on a GPU: docs/gpu-validation.md records no run of it."
# NVML's memory-limit calls came with this driver branch.
NVML_LIMITS_BRANCH = 615


@dataclass(frozen=True)
class Mode:
    """One value of TFGPU.hard_caps (``auto`` aside)."""

    name: str
    mechanism: str | None  # the MECHANISMS key of its limits; None: no driver limit
    manual: str  # what it does, needs and costs: its paragraph of the setting's help
    missing: Callable[[HostFacts], list[str]]  # what this machine lacks for it, in words
    make: Callable[[MechanismContext], Mechanism] | None  # None: not in this version


def _gpus_missing(host: HostFacts) -> list[str]:
    if host.nvml_error:
        return [f"the GPUs could not be read: {host.nvml_error}"]
    if not host.gpus:
        return ["NVML finds no NVIDIA GPU"]
    return []


def _mig(host: HostFacts, what: str) -> list[str]:
    return [
        f"GPU {gpu.index} ({gpu.name}) has MIG enabled, and {what} does not apply to MIG GPUs"
        for gpu in host.gpus
        if gpu.mig
    ]


def mps_missing(host: HostFacts) -> list[str]:
    """What MPS lacks here: an MPS daemon to use (the device plugin's, or one the server starts
    with nvidia-cuda-mps-control), Volta or newer GPUs, no MIG, a compute mode that allows it."""
    external = host.external_mps
    if external is not None and external.control is not None:
        return []  # the device plugin's daemon: clients need only its pipe folder
    lacks = []
    if not host.mps_control:
        lacks.append(
            f"{MPS_CONTROL} is not on the server's PATH (the NVIDIA driver's utilities have it)"
        )
    lacks += _gpus_missing(host)
    for gpu in host.gpus:
        capability = gpu.compute_capability
        if capability is None:
            lacks.append(f"GPU {gpu.index} ({gpu.name}): NVML could not say its compute capability")
        elif capability[0] < 7:
            lacks.append(
                f"GPU {gpu.index} ({gpu.name}) is older than Volta (compute capability "
                f"{capability[0]}.{capability[1]}); MPS memory limits need Volta or newer"
            )
        if gpu.compute_mode == "prohibited":
            lacks.append(f"GPU {gpu.index} ({gpu.name}) is in compute mode Prohibited")
    return lacks + _mig(host, "MPS")


def nvml_missing(host: HostFacts) -> list[str]:
    """What NVML memory limits lack here: the calls (nvidia-ml-py 13.615.71+, driver R615+),
    cgroup v2 at /sys/fs/cgroup with the dmem controller, root, no MIG."""
    lacks = _gpus_missing(host)
    calls = host.memory_limits
    branch = driver_branch(host.driver)
    if not calls.bindings:
        lacks.append(calls.detail or "nvidia-ml-py has no memory-limit calls")
    if branch is not None and int(branch) < NVML_LIMITS_BRANCH:
        lacks.append(
            f"driver {host.driver} is older than R{NVML_LIMITS_BRANCH}, which brought NVML's "
            "memory limits"
        )
    elif calls.driver is False:
        lacks.append(f"driver {host.driver}: {calls.detail}")
    cgroup = host.cgroup
    if cgroup is None or not cgroup.v2:
        root = cgroup.root if cgroup is not None else "/sys/fs/cgroup"
        lacks.append(f"no cgroup v2 hierarchy at {root} (cgroup v1, or a hybrid layout)")
    elif not cgroup.dmem:
        lacks.append(
            f"the dmem controller is not available to the server's cgroup ({cgroup.own or '/'}); "
            "Linux has it from 6.14"
        )
    if host.euid != 0:
        lacks.append(f"the server does not run as root (uid {host.euid}); setting limits needs root")
    return lacks + _mig(host, "NVML's memory limits")


def _nothing_missing(host: HostFacts) -> list[str]:
    return []


MODES: tuple[Mode, ...] = (
    Mode(
        "nvml",
        "nvml_memory_limit",
        "'nvml': each kernel runs in a cgroup of its own, joined before any of its code runs, "
        "and the server sets NVML memory limits for that cgroup on the kernel's GPUs (its "
        "effective memory_limit_mb), so the driver refuses allocations past it whatever "
        "allocates them, in the kernel and in every process it starts, Python or not. The "
        "kernel runs as root, as the server must, so its own code can leave its cgroup or clear "
        "the limit: the level stays 'framework'; what it adds is that every allocator is held "
        "at the cap at once, not after the enforcer's grace period. A cap changed in the caps "
        "file reaches a running kernel's limit at its restart. Needs driver R615 or newer, "
        "nvidia-ml-py 13.615.71 or newer, cgroup v2 at /sys/fs/cgroup with the dmem controller "
        "enabled for the server's cgroup, the server running as root and as the only process "
        "of its cgroup (it moves itself into a cgroup below it), no MIG. Costs: the server and "
        f"its kernels run as root. {NOT_ON_A_GPU}",
        nvml_missing,
        NvmlMemoryLimits,
    ),
    Mode(
        "mps",
        "mps",
        "'mps': the server runs an MPS control daemon (started with it, watched, restarted "
        "when it dies, stopped with it), with max_memory_mb as each GPU's default limit, and "
        "each kernel is its client, with its effective memory_limit_mb as a pinned device "
        "memory limit on each of its GPUs and its compute_percent as its share of the SMs; "
        "where the server's environment names a running MPS daemon (the Kubernetes device "
        "plugin's), that one is used and none started. An MPS limit holds each CUDA process of "
        "a kernel, not the kernel as a whole. Code in the kernel can lift an MPS limit through "
        "its own environment before CUDA starts, so its level stays 'framework'; what it adds "
        "is that every allocator is held at the cap at once, not after the enforcer's grace "
        "period. A new max_memory_mb applies to CUDA processes that connect after the change. "
        "Needs nvidia-cuda-mps-control on PATH, Volta or newer GPUs, no MIG. Costs: a fatal GPU "
        "fault in one kernel ends the GPU work of every kernel on that GPU, and no new kernel "
        "uses it until they all exit; one MPS server per user; cudaMemGetInfo shows the limit "
        f"as free memory but the whole GPU as total. {NOT_ON_A_GPU}",
        mps_missing,
        make_mps,
    ),
    Mode(
        "off",
        None,
        "'off' (the default): no driver limit; caps are held by the framework settings and the "
        "enforcer, as before.",
        _nothing_missing,
        FrameworkSettings,
    ),
)
MODE_NAMES: tuple[str, ...] = tuple(mode.name for mode in MODES)
# The order ``auto`` tries the driver modes in, as the admin manual says it.
AUTO_ORDER = ", ".join(row.name for row in MODES if row.mechanism is not None)
# TFGPU.hard_caps' values: the modes, off first, and auto.
SETTING_VALUES: tuple[str, ...] = ("off", *(m for m in MODE_NAMES if m != "off"), AUTO)


def mode(name: str) -> Mode:
    """The row of mode ``name`` (KeyError for ``auto`` or a name that is none)."""
    return next(row for row in MODES if row.name == name)


def candidates(asked: str) -> list[Mode]:
    """The modes to try for what the admin asked, in order: ``auto`` tries every driver mode
    in the table's order, then ``off``; a named mode is tried alone."""
    if asked == AUTO:
        return list(MODES)
    return [mode(asked)]


def missing(row: Mode, host: HostFacts) -> list[str]:
    """What ``row`` lacks on this machine; a mode this version has no mechanism for lacks that."""
    lacks = row.missing(host)
    if row.make is None:
        lacks = [f"this version of jupyter-tfgpu has no '{row.name}' mechanism yet", *lacks]
    return lacks


def manual() -> str:
    """The modes' paragraphs of the setting's help, in the table's order, off first."""
    rows = sorted(MODES, key=lambda row: row.name != "off")
    return " ".join(row.manual for row in rows)

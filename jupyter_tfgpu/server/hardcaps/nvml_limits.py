"""Mode ``nvml``: each kernel in a cgroup of its own, with NVML memory limits on its GPUs.

As a kernel (re)starts, before its process exists, the mechanism makes a leaf cgroup for it
(``nvml_cgroups.ServerCgroups``) and sets, on each GPU the kernel may use, an NVML hard limit of
its effective ``memory_limit_mb`` for that leaf (soft 0). The kernel's command is wrapped by
``cgexec.py``, which joins the leaf and then execs the kernel, so no kernel code runs outside
it and the processes the kernel starts stay in it. When the kernel stops, restarts or fails to
start, the limits are cleared and the leaf removed once no process is left in it; a leaf that
still holds processes (a child the kernel detached) keeps its limits, is reported, and is tried
again at each later kernel start and stop, and when the server stops.

A launcher that cannot join its leaf starts nothing and tells the server in a file; jupyter's
restarter starts the kernel again, and this time it gets its framework settings only, the
reason said. A cap changed in the caps file reaches a running kernel's limit at its restart, as
the rest of its launch does (see ``docs/admin/hard-caps-nvml.md``).

Level: ``framework`` while no GPU run has shown this mechanism holding (``verified.VERIFIED``),
and while the kernel runs as root, as the server must: root can move its own process out of
its cgroup and clear a limit through NVML. Not yet run on a GPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from jupyter_tfgpu.gpu.backend import MiB
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.server.hardcaps import cgexec
from jupyter_tfgpu.server.hardcaps.framework import framework_enforcement
from jupyter_tfgpu.server.hardcaps.host import read_small
from jupyter_tfgpu.server.hardcaps.mechanism import (
    MechanismContext,
    MechanismError,
    MechanismStatus,
    Prepared,
    StartingKernel,
)
from jupyter_tfgpu.server.hardcaps.nvml_cgroups import (
    MOUNT,
    CgroupFiles,
    CgroupUnavailable,
    ServerCgroups,
)
from jupyter_tfgpu.server.hardcaps.nvml_limit_calls import NvmlLimitCalls
from jupyter_tfgpu.server.hardcaps.verified import driver_level

MECHANISM = "nvml_memory_limit"
AS_ROOT = (
    "the kernel runs as root, as the server does, so its own code can move its processes out "
    "of its cgroup or clear the limit through NVML"
)
# How the server's cgroupfs is written; tests give a temporary tree's (tests/fake_cgroup_tree.py).
cgroup_files: Callable[[], CgroupFiles] = CgroupFiles


@dataclass
class KernelCgroup:
    """One kernel start's leaf, and the GPUs (name, handle) it set a limit on."""

    kernel_id: str
    leaf: Path
    hard: int  # bytes
    gpus: list[tuple[str, Any]] = field(default_factory=list)


class NvmlMemoryLimits:
    """The ``nvml`` mechanism (see the module)."""

    def __init__(
        self,
        context: MechanismContext,
        calls: NvmlLimitCalls | None = None,
        cgroups: ServerCgroups | None = None,
        python: str = sys.executable,
    ) -> None:
        self.context = context
        facts = context.host.cgroup
        self.own = facts.own if facts is not None else None
        mount = Path(facts.root) if facts is not None else MOUNT
        self.calls = calls or NvmlLimitCalls()
        self.cgroups = cgroups or ServerCgroups(mount, cgroup_files())
        self.python = python
        # The kernel's processes run as the server's user: the launcher changes no user.
        self.kernel_euid = context.host.euid if context.host.euid is not None else os.geteuid()
        # Where a launcher says it could not join its leaf (made at start, removed at stop)
        self.failures = context.runtime_dir
        self.state = "stopped"
        self.detail: str | None = None
        self._kernels: dict[str, KernelCgroup] = {}
        self._left: list[KernelCgroup] = []  # leaves processes remained in, limits kept
        self._cooperative: dict[str, str] = {}  # kernel id -> why its launcher could not join

    # -- with the server -----------------------------------------------------------------------

    def start(self) -> None:
        """Open NVML, make this server's cgroup, and check that a limit can be set there."""
        try:
            self.calls.open()
        except Exception as err:  # noqa: BLE001 - said as the reason the mode is not used
            raise MechanismError(f"NVML could not be opened for its memory limits: {err}") from err
        try:
            left = self.cgroups.open(self.own)
        except CgroupUnavailable as err:
            self.calls.close()
            raise MechanismError(str(err)) from err
        try:
            self._check_setting()
        except MechanismError:
            self.cgroups.close()
            self.calls.close()
            raise
        self.failures.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in left:
            self.context.log.warning("jupyter-tfgpu: NVML limits: a former server left %s",
                                     leftover)  # fmt: skip
        self.state, self.detail = "running", f"kernels' cgroups under {self.cgroups.parent}"

    def _check_setting(self) -> None:
        # Clearing the parent's limits is a Set call that changes nothing: it answers whether
        # this process may set limits here (root, dmem files) before any kernel relies on it.
        gpus = self.context.host.gpus
        if not gpus:
            return
        try:
            self.calls.clear(self.calls.handle(gpus[0].uuid), self.cgroups.parent)
        except Exception as err:  # noqa: BLE001
            raise MechanismError(f"a limit cannot be set: {self.calls.words(err)}") from err

    def stop(self) -> None:
        """Release every kernel's leaf, remove this server's cgroup, and close NVML."""
        for kernel_id in list(self._kernels):
            self.release(kernel_id)
        self._retry_left()
        try:
            for leftover in self.cgroups.close():
                self.context.log.warning(
                    "jupyter-tfgpu: NVML limits: %s still holds processes; it keeps its limits "
                    "and the next server in this cgroup removes it once they exit", leftover
                )
        finally:
            self.calls.close()
            self.state = "stopped"
            for told in self.failures.glob("*.failed") if self.failures.is_dir() else []:
                told.unlink(missing_ok=True)
            try:
                self.failures.rmdir()
            except OSError:
                pass  # not made, or something else was put there: left as it is

    # -- per kernel ----------------------------------------------------------------------------

    def prepare(self, kernel: StartingKernel) -> Prepared:
        """A leaf with its limits for the kernel, and the launcher that joins it."""
        if kernel.kernel_id in self._kernels:  # restarted without a release first
            self.release(kernel.kernel_id)
        self._retry_left()
        why = self._cooperative.pop(kernel.kernel_id, None)
        if why is not None:
            raise MechanismError(f"at its last start, {why}")
        gpus = kernel.gpus
        mb = kernel.memory_limit_mb
        if mb is None or not gpus or kernel.launch.devices == []:
            return Prepared(framework_enforcement(kernel))  # no cap on a GPU: nothing to hold
        try:
            leaf = self.cgroups.make_leaf(kernel.kernel_id)
        except CgroupUnavailable as err:
            raise MechanismError(str(err)) from err
        held = KernelCgroup(kernel.kernel_id, leaf, mb * MiB)
        try:
            for gpu in gpus:
                handle = self.calls.handle(gpu)
                self.calls.set(handle, leaf, held.hard)
                held.gpus.append((gpu, handle))
        except Exception as err:  # noqa: BLE001 - undone, and the kernel starts cooperative
            self._clear(held)
            self.cgroups.remove(leaf)
            raise MechanismError(f"GPU {gpu}: {self.calls.words(err)}") from err
        self._kernels[kernel.kernel_id] = held
        told = self.failures / f"{leaf.name}.failed"
        wrapper = (self.python, "-I", cgexec.__file__, "--failed", str(told), str(leaf), "--")
        return Prepared(self.enforcement(gpus), wrapper=wrapper)

    def enforcement(self, gpus: Sequence[str]) -> CapEnforcement:
        """How the limit holds a kernel on each of its GPUs (see the module on the level)."""
        level, reason = driver_level(MECHANISM, self.context.host.driver, None)
        if self.kernel_euid == 0:
            level = "framework"
            reason = f"{reason}; and {AS_ROOT}" if reason else AS_ROOT
        return CapEnforcement.of(GpuEnforcement(gpu, level, MECHANISM, reason) for gpu in gpus)

    def release(self, kernel_id: str) -> None:
        """Clear the kernel's limits and remove its leaf, unless processes remain in it."""
        held = self._kernels.pop(kernel_id, None)
        if held is None:
            return
        told = self.failures / f"{held.leaf.name}.failed"
        if told.exists():
            why = read_small(told, 500) or "it could not join"
            told.unlink(missing_ok=True)
            self._cooperative[kernel_id] = why
            self.context.log.warning("jupyter-tfgpu: kernel %s: %s; it starts again with its "
                                     "framework settings only", kernel_id, why)  # fmt: skip
        left = self.cgroups.processes(held.leaf) if held.leaf.exists() else []
        if left:
            self._keep(held, left)
            return
        self._clear(held)
        left = self.cgroups.remove(held.leaf)
        if left:  # a process came in between: hold it again
            self._limit_again(held)
            self._keep(held, left)

    def before_signal(self, kernel_id: str, pids: Sequence[int]) -> None:
        """Signals need nothing first: the cgroup outlives them."""

    def status(self) -> MechanismStatus:
        """Its state, from what it keeps (no I/O)."""
        return MechanismStatus(
            self.state,
            self.detail,
            {
                "cgroup": str(self.cgroups.parent) if self.cgroups.parent else None,
                "kernels": len(self._kernels),
                "left_with_processes": len(self._left),
            },
        )

    # -- leaves left with processes ------------------------------------------------------------

    def _keep(self, held: KernelCgroup, pids: list[int]) -> None:
        self._left.append(held)
        self.context.log.warning(
            "jupyter-tfgpu: kernel %s stopped, but processes remain in its cgroup %s (%s): its "
            "limits stay until they exit", held.kernel_id, held.leaf, ", ".join(map(str, pids[:5]))
        )

    def _retry_left(self) -> None:
        for held in list(self._left):
            if held.leaf.exists() and self.cgroups.processes(held.leaf):
                continue
            self._left.remove(held)
            self._clear(held)
            if held.leaf.exists() and self.cgroups.remove(held.leaf):
                self._limit_again(held)
                self._left.append(held)

    def _clear(self, held: KernelCgroup) -> None:
        for gpu, handle in held.gpus:
            try:
                self.calls.clear(handle, held.leaf)
            except Exception as err:  # noqa: BLE001 - removing the leaf clears them too
                self.context.log.warning("jupyter-tfgpu: NVML limits: clearing %s on GPU %s: %s",
                                         held.leaf, gpu, self.calls.words(err))  # fmt: skip

    def _limit_again(self, held: KernelCgroup) -> None:
        for gpu, handle in held.gpus:
            try:
                self.calls.set(handle, held.leaf, held.hard)
            except Exception as err:  # noqa: BLE001
                self.context.log.error("jupyter-tfgpu: NVML limits: setting %s again on GPU %s: "
                                       "%s", held.leaf, gpu, self.calls.words(err))  # fmt: skip


"""Mode ``mps``: each kernel a client of NVIDIA MPS, its cap a pinned device memory limit.

Two cases, one per row of ``modes.MODES`` (``make_mps`` picks):

- ``ServerMps``: the server runs its own MPS control daemon (``mps_daemon.MpsDaemon``), with
  the admin's ``max_memory_mb`` as each GPU's default limit, the limit no client exceeds.
- ``PlatformMps``: the server's own environment names an MPS daemon that already runs (the
  Kubernetes device plugin's MPS sharing: ``CUDA_MPS_PIPE_DIRECTORY`` with a ``control``
  socket). No daemon is started; the platform's limit per client stays, and what is set per
  kernel can only lower it.

Each kernel gets ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` as
``<uuid>=<N>M`` for the GPUs it may see and no other (an entry naming a GPU the process cannot
see drops every limit, as NVIDIA's Dynamo guide measured on 615.71.09), N its effective
``memory_limit_mb``; its compute share (policy ``compute_percent``) is in its environment
already (``policy/environment.py``). The framework limits stay as they are under it. An MPS limit
holds each CUDA process of the kernel, not the kernel as a whole.

Level: ``framework``, mechanism ``mps``: the driver holds each process at the limit whatever
allocates, at once, but code in the kernel can lift it through its own environment before CUDA
starts (``verified.driver_level`` with ``LIFTABLE``). Before a kernel's processes are signalled,
each that is an MPS client is ``terminate_client``-ed first (signalling a client is unsupported
by MPS). Not yet run on a GPU.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.server.hardcaps.framework import framework_enforcement
from jupyter_tfgpu.server.hardcaps.host import MPS_CONTROL, MPS_PIPE_ENV, HostFacts
from jupyter_tfgpu.server.hardcaps.mechanism import (
    Mechanism,
    MechanismContext,
    MechanismError,
    MechanismStatus,
    Prepared,
    StartingKernel,
)
from jupyter_tfgpu.server.hardcaps.mps_control import MpsControl, MpsUnreachable
from jupyter_tfgpu.server.hardcaps.mps_daemon import MpsDaemon
from jupyter_tfgpu.server.hardcaps.verified import driver_level

MECHANISM = "mps"
LIMIT_ENV = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
LIFTABLE = (
    "MPS limits this kernel in the driver, but code in the kernel can lift them through its "
    "own environment before CUDA starts"
)
PLATFORM = (
    "the platform's MPS daemon holds each process at its own limit; this kernel's lower cap is "
    "set through its environment, which code in the kernel can change before CUDA starts"
)
WATCH_SECONDS = 5.0  # how often the watcher looks at the server's daemon


def device_uuids(kernel: StartingKernel, host: HostFacts) -> dict[str, str]:
    """Each GPU the kernel may use, as its launch names it, -> its UUID; GPUs with no UUID known
    (or MIG slices, which MPS mode does not hold) are left out."""
    by_index = {str(gpu.index): gpu.uuid for gpu in host.gpus}
    uuids = {gpu.uuid for gpu in host.gpus}
    found = {}
    for gpu in kernel.gpus:
        uuid = gpu if gpu in uuids else by_index.get(gpu)
        if uuid:
            found[gpu] = uuid
    return found


def client_limit(kernel: StartingKernel, host: HostFacts) -> str | None:
    """``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` for the kernel: its cap on each GPU it may see, by
    UUID; None without a cap or a GPU (then the variable is removed: an inherited one may name
    GPUs the kernel cannot see)."""
    cap = kernel.memory_limit_mb
    uuids = device_uuids(kernel, host)
    if cap is None or not uuids or kernel.launch.devices == []:
        return None
    return ",".join(f"{uuid}={cap}M" for uuid in uuids.values())


def mps_enforcement(kernel: StartingKernel, host: HostFacts, reason: str) -> CapEnforcement:
    """How an MPS limit holds ``kernel``: per GPU with a UUID, ``mps`` at the level
    ``verified.driver_level`` gives (``reason`` says how the kernel can lift it); the framework
    settings elsewhere, and for a kernel without a cap or without GPUs."""
    if kernel.memory_limit_mb is None or kernel.launch.devices == []:
        return framework_enforcement(kernel)
    uuids = device_uuids(kernel, host)
    if not uuids:
        return framework_enforcement(kernel, "no GPU of this kernel has a UUID MPS can be given")
    level, why = driver_level(MECHANISM, host.driver, reason)
    fallback = {g.gpu: g for g in framework_enforcement(kernel).gpus}
    return CapEnforcement.of(
        GpuEnforcement(gpu, level, MECHANISM, why) if gpu in uuids else fallback[gpu]
        for gpu in kernel.gpus
    )


class ServerMps:
    """MPS with the server's own daemon: started, watched and stopped with the server."""

    def __init__(self, context: MechanismContext) -> None:
        self.context = context
        host = context.host
        self.daemon = MpsDaemon(
            binary=host.mps_control or MPS_CONTROL,
            runtime_dir=context.runtime_dir,
            devices=[gpu.uuid for gpu in host.gpus],
            limit_mb=lambda: getattr(context.admin(), "max_memory_mb", None),
            clock=context.clock,
            log=context.log,
            on_down=self._down,
            on_up=self._up,
        )
        self._kernels: dict[str, tuple[StartingKernel, CapEnforcement]] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start the daemon (and its limits), then the watcher; nothing is left of a start that
        failed."""
        try:
            self.daemon.start()
        except MechanismError:
            self.daemon.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="tfgpu-mps-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            try:
                self.daemon.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad check
                self.context.log.exception("jupyter-tfgpu: MPS: watching the daemon failed")

    def stop(self) -> None:
        """Stop watching, quit the daemon, remove its folders."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        self.daemon.stop()

    def prepare(self, kernel: StartingKernel) -> Prepared:
        """The kernel's MPS variables; MechanismError while the daemon is down (a kernel that
        connected then would run without MPS)."""
        if self.daemon.state != "running":
            raise MechanismError(
                f"the MPS control daemon is not running ({self.daemon.last_error or self.daemon.state})"
            )
        host = self.context.host
        enforcement = mps_enforcement(kernel, host, LIFTABLE)
        env = {MPS_PIPE_ENV: str(self.daemon.pipe_dir), LIMIT_ENV: client_limit(kernel, host)}
        self._kernels[kernel.kernel_id] = (kernel, enforcement)
        return Prepared(enforcement, env)

    def release(self, kernel_id: str) -> None:
        """Nothing is set per kernel in the daemon: forget it."""
        self._kernels.pop(kernel_id, None)

    def before_signal(self, kernel_id: str, pids: Sequence[int]) -> None:
        """terminate_client each of the kernel's processes that is an MPS client."""
        try:
            failed = self.daemon.terminate_clients(pids)
        except MpsUnreachable as err:
            failed = [str(err)]
        for what in failed:
            self.context.log.warning("jupyter-tfgpu: kernel %s: terminate_client %s", kernel_id, what)

    def _down(self, why: str) -> None:
        for kernel_id, (kernel, _) in list(self._kernels.items()):
            self.context.report(
                kernel_id,
                framework_enforcement(
                    kernel,
                    f"the MPS control daemon is down ({why}): CUDA processes this kernel starts "
                    "before it is back run without MPS limits",
                ),
            )

    def _up(self) -> None:
        for kernel_id, (_, enforcement) in list(self._kernels.items()):
            self.context.report(kernel_id, enforcement)

    def status(self) -> MechanismStatus:
        """The daemon's state, restarts and limits, as kept."""
        daemon = self.daemon
        detail = {
            "running": "the server's MPS control daemon runs",
            "restarting": f"the MPS control daemon died and is being started again: {daemon.last_error}",
            "failed": f"the MPS control daemon could not be started: {daemon.last_error}",
            "starting": "the MPS control daemon is starting",
            "stopped": "the MPS control daemon is stopped",
        }[daemon.state]
        return MechanismStatus(daemon.state, detail, daemon.facts())


class PlatformMps:
    """MPS run by the platform (the Kubernetes device plugin): read, used, never started."""

    def __init__(self, context: MechanismContext) -> None:
        self.context = context
        external = context.host.external_mps
        self.pipe_dir = external.pipe_directory if external is not None else ""
        self.read: dict[str, Any] = {}

    def start(self) -> None:
        """Read the platform daemon's limits where its front end is there to ask."""
        binary = self.context.host.mps_control
        if not binary:
            self.read = {"limits": f"not read: {MPS_CONTROL} is not on the server's PATH"}
            return
        control = MpsControl(binary, self.pipe_dir)
        try:
            # The device plugin sets its limits by device index, in the node's numbering.
            limits = {
                str(gpu.index): control.default_limit(str(gpu.index)) for gpu in self.context.host.gpus
            }
            self.read = {
                "default_limits_by_index": ", ".join(f"{i}={v}" for i, v in limits.items()) or None,
                "default_thread_percentage": control.default_thread_percentage(),
            }
        except MpsUnreachable as err:
            self.read = {"limits": f"not read: {err}"}

    def stop(self) -> None:
        """The platform's daemon is not the server's to stop."""

    def prepare(self, kernel: StartingKernel) -> Prepared:
        """Its pipe folder, and its cap as the client variable (which only lowers the limit)."""
        host = self.context.host
        env = {MPS_PIPE_ENV: self.pipe_dir, LIMIT_ENV: client_limit(kernel, host)}
        return Prepared(mps_enforcement(kernel, host, PLATFORM), env)

    def release(self, kernel_id: str) -> None:
        """Nothing was set."""

    def before_signal(self, kernel_id: str, pids: Sequence[int]) -> None:
        """Nothing: terminate_client takes PIDs as the platform's daemon sees them (the node's),
        which the pod's are not."""

    def status(self) -> MechanismStatus:
        """What was read of the platform's daemon."""
        return MechanismStatus(
            "running",
            "the platform's MPS daemon (CUDA_MPS_PIPE_DIRECTORY of the server's environment); "
            "the server starts none, and can only lower a kernel's limit",
            {"pipe_directory": self.pipe_dir, **self.read},
        )


def make_mps(context: MechanismContext) -> Mechanism:
    """The platform's MPS where the server's environment names a running daemon, else the
    server's own."""
    external = context.host.external_mps
    if external is not None and external.control is not None:
        return PlatformMps(context)
    return ServerMps(context)

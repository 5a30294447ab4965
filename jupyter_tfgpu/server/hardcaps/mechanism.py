"""The interface a hard-caps mechanism implements, and the types it is handed and returns.

A mechanism (``framework.py`` for ``off``; ``mps``, ``nvml`` in modules of their own beside it)
is made once per server from a ``MechanismContext`` by its row in ``modes.MODES``, and is
driven by ``service.HardCaps``, which:

- calls ``start()`` as the server starts and ``stop()`` as it stops, once each, after the
  server's kernels were shut down (so every ``release`` came first);
- calls ``prepare()`` as each kernel (re)starts, before its process exists; ``release()`` when
  it stopped, before it restarts, and when its start failed; ``before_signal()`` before its
  processes get SIGTERM or SIGKILL (a restart, a shutdown, an enforcement action);
- calls all of these in one worker thread of its own, one at a time: never on the event loop,
  so a mechanism may block (run a command, write a cgroup file, call NVML) but must bound how
  long (a hung driver or daemon must not hold kernel starts for ever: the service gives up on
  a ``prepare`` after ``PREPARE_SECONDS`` and starts the kernel cooperative);
- reads ``status()`` on the event loop: it must answer from what the mechanism keeps, at once.

A mechanism never has to keep a kernel from starting: ``prepare`` raises ``MechanismError`` (or
anything) when it cannot hold that kernel, and the service starts the kernel with its framework
settings, level ``framework``, the reason naming what failed. A mechanism that learns later that
a running kernel's limit no longer holds (its daemon died, its launcher could not join the
cgroup) says so through ``MechanismContext.report``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement
from jupyter_tfgpu.policy.launch import Launch

if TYPE_CHECKING:
    from jupyter_tfgpu.policy.admin import AdminPolicy
    from jupyter_tfgpu.server.hardcaps.host import HostFacts


class MechanismError(Exception):
    """A mechanism cannot do what it was asked; the message says why, in words an admin can act
    on ("nvidia-cuda-mps-control -d exited with 1: ...")."""


@dataclass(frozen=True)
class StartingKernel:
    """A kernel about to (re)start, as a mechanism's ``prepare`` sees it."""

    kernel_id: str
    launch: Launch  # its effective policy as rendered for its process (the GPUs as CUDA names them)
    language: str | None  # its kernelspec's language ("python"); None when it names none
    devices: tuple[DeviceInfo, ...] = ()  # the server's GPUs as the kernel starts

    @property
    def python(self) -> bool:
        """Whether the bootstrap's in-process settings reach the kernel's own process."""
        return (self.language or "python").lower() == "python"

    @property
    def gpus(self) -> list[str]:
        """The GPUs it may use, as its launch names them (UUIDs, or indices where no UUID was
        known); every GPU of the server that could be opened when its policy names none."""
        named = self.launch.gpus
        if named is not None:
            return named
        return [device.uuid or str(device.index) for device in self.devices if not device.lost]

    @property
    def memory_limit_mb(self) -> int | None:
        """Its cap per GPU (MiB, as NVML shows its processes); None without one."""
        return self.launch.memory_limit_mb


@dataclass(frozen=True)
class Prepared:
    """What a mechanism gives a kernel about to start."""

    enforcement: CapEnforcement  # how its cap is enforced, per GPU
    env: Mapping[str, str | None] = field(default_factory=dict)  # added; None removes a variable
    # Put before the kernel's command (e.g. a launcher that joins a cgroup, then execs the
    # kernel); empty: the command as it is
    wrapper: tuple[str, ...] = ()


@dataclass(frozen=True)
class MechanismStatus:
    """A mechanism's state, as GET status shows it under ``hard_caps.mechanism``."""

    state: str  # "running", "starting", "restarting", "failed", "stopped"
    detail: str | None = None  # what is wrong, or what is worth knowing, in words
    # Facts of its own (a daemon's pid, its restarts, the last error's time), by name
    facts: Mapping[str, str | int | float | bool | None] = field(default_factory=dict)

    def to_json(self, name: str) -> dict[str, Any]:
        """As GET status lists it."""
        return {"name": name, "state": self.state, "detail": self.detail, "facts": dict(self.facts)}


@dataclass(frozen=True)
class MechanismContext:
    """What a mechanism is made from: what it may use of the server that runs it."""

    host: HostFacts  # what was found on this machine as the server started (requirements.py)
    # This server's folder for the mechanism's files (<jupyter runtime>/tfgpu-hardcaps-<pid>/):
    # not made yet; the mechanism makes it, and removes it as it stops. Keep paths under it
    # short: a unix socket's path has 107 bytes at most.
    runtime_dir: Path
    admin: Callable[[], AdminPolicy]  # the caps in force now (a caps file changes them)
    # A running kernel's enforcement changed (its limit no longer holds, or holds again):
    # the kernel's launch says so from then on
    report: Callable[[str, CapEnforcement], None] = lambda kernel_id, enforcement: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("jupyter_tfgpu"))
    clock: Callable[[], float] = time.monotonic  # for watching and back-off; tests inject it


class Mechanism(Protocol):
    """What holds kernels' caps for one ``TFGPU.hard_caps`` mode."""

    def start(self) -> None:
        """Start with the server (a daemon, a parent cgroup); MechanismError when it cannot."""

    def stop(self) -> None:
        """Stop with the server, leaving nothing behind (its processes, folders, limits)."""

    def prepare(self, kernel: StartingKernel) -> Prepared:
        """Hold this kernel at its cap from its first instruction: set what must be set before
        its process exists, and say what its environment and command get and how each of its
        GPUs is held (``framework.framework_enforcement`` for any GPU it does not hold)."""

    def release(self, kernel_id: str) -> None:
        """The kernel stopped, is about to restart, or failed to start: undo what ``prepare``
        set for it. Called for kernels ``prepare`` never saw too (do nothing then)."""

    def before_signal(self, kernel_id: str, pids: Sequence[int]) -> None:
        """The kernel's processes (``pids``: the kernel's and its descendants') are about to get
        SIGTERM or SIGKILL: do what the mechanism needs first (MPS: terminate_client)."""

    def status(self) -> MechanismStatus:
        """Its state now, without blocking (read on the event loop)."""

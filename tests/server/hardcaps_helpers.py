"""A mechanism that records what the hard caps ask of it, and the ways to put it in a mode's row.

The real mechanisms (``server/hardcaps/<mode>.py``) are tested with their own fakes (an MPS
control daemon, NVML's memory-limit calls and a cgroup tree); this one tests the service, the
launches and the provisioner around any mechanism: what they call, when, in which thread, and
what a kernel starts with when a mechanism fails.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.server.hardcaps import modes
from jupyter_tfgpu.server.hardcaps.host import Probe
from jupyter_tfgpu.server.hardcaps.mechanism import (
    MechanismContext,
    MechanismError,
    MechanismStatus,
    Prepared,
    StartingKernel,
)
from jupyter_tfgpu.server.hardcaps.verified import driver_level

WRAPPED_ENV = "TFGPU_TEST_WRAPPED"


class RecordingMechanism:
    """Holds every GPU of a kernel with a cap as the ``mps`` mechanism would (same level rule),
    adds a variable and a wrapper, and records each call with the thread it came in."""

    # Set by a test before the server starts: what the next instances do.
    fail_start: str | None = None
    fail_prepare: str | None = None
    wrapper: tuple[str, ...] = ()
    made: list[RecordingMechanism] = []

    def __init__(self, context: MechanismContext) -> None:
        self.context = context
        self.calls: list[tuple[Any, ...]] = []
        self.threads: set[str] = set()
        type(self).made.append(self)

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self.threads.add(threading.current_thread().name)

    def start(self) -> None:
        self._record("start")
        if self.fail_start:
            raise MechanismError(self.fail_start)

    def stop(self) -> None:
        self._record("stop")

    def prepare(self, kernel: StartingKernel) -> Prepared:
        self._record("prepare", kernel.kernel_id, kernel.language, tuple(kernel.gpus))
        if self.fail_prepare:
            raise MechanismError(self.fail_prepare)
        level, reason = driver_level("mps", self.context.host.driver, None)
        gpus = [GpuEnforcement(gpu, level, "mps", reason) for gpu in kernel.gpus]
        return Prepared(
            CapEnforcement.of(gpus),
            env={WRAPPED_ENV: f"limit={kernel.memory_limit_mb}"},
            wrapper=self.wrapper,
        )

    def release(self, kernel_id: str) -> None:
        self._record("release", kernel_id)

    def before_signal(self, kernel_id: str, pids) -> None:
        self._record("before_signal", kernel_id, tuple(pids))

    def status(self) -> MechanismStatus:
        return MechanismStatus("running", "recording", {"calls": len(self.calls)})

    def names(self) -> list[str]:
        """The calls' names, in order."""
        return [call[0] for call in self.calls]


def reset_recording() -> None:
    """Forget what earlier tests set on the class."""
    RecordingMechanism.fail_start = RecordingMechanism.fail_prepare = None
    RecordingMechanism.wrapper = ()
    RecordingMechanism.made = []


def with_mechanism(monkeypatch, name: str, make=RecordingMechanism, missing=None) -> None:
    """Give mode ``name``'s row ``make`` as its mechanism (and ``missing`` as its needs: none
    unless given), for the test."""
    rows = tuple(
        dataclasses.replace(row, make=make, missing=missing or (lambda host: []))
        if row.name == name
        else row
        for row in modes.MODES
    )
    monkeypatch.setattr(modes, "MODES", rows)


def cgroup_tree(root: Path, own: str = "/user.slice/jupyter", controllers: str = "cpu memory dmem") -> Path:
    """A cgroup v2 tree as /sys/fs/cgroup shows it, the server in ``own``; its
    /proc/self/cgroup beside it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    leaf = root / own.lstrip("/")
    leaf.mkdir(parents=True, exist_ok=True)
    (leaf / "cgroup.controllers").write_text(controllers + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


def probe(tmp_path: Path, nvml=None, **fields: Any) -> Probe:
    """A probe of nothing real: no PATH, no NVML unless given, a cgroup v1 root, uid 1000."""

    def no_nvml():
        raise ImportError("no pynvml here")

    made = {
        "environ": {"PATH": str(tmp_path / "bin")},
        "euid": lambda: 1000,
        "cgroup_root": tmp_path / "no-cgroup",
        "proc_self_cgroup": tmp_path / "no-proc",
        "nvml": (lambda: nvml) if nvml is not None else no_nvml,
        "clock": lambda: 1000.0,
    }
    made.update(fields)
    return Probe(**made)

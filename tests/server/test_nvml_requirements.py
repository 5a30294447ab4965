"""What the ``nvml`` mode needs, each lack said in words, through the server's hard caps: the
modes' table over what the machine offers (a fake NVML, a temporary cgroup tree), then the
mechanism's own start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jupyter_tfgpu.server.hardcaps import nvml_limits
from jupyter_tfgpu.server.hardcaps.service import HardCaps
from tests.fake_cgroup_tree import FakeCgroupTree
from tests.fake_pynvml import FakeGpu, FakeMig, FakeNvml
from tests.server.hardcaps_helpers import probe

OWN = "/system.slice/jupyter.service"


class Machine:
    """A machine that has everything nvml needs, each part of which a test may take away."""

    def __init__(self, tmp_path, monkeypatch, **tree_args) -> None:
        self.tmp_path = tmp_path
        self.fake = FakeNvml([FakeGpu(), FakeGpu()], driver_version="615.71.09", privileged=True)
        self.tree = FakeCgroupTree(tmp_path / "sys", **tree_args)
        self.fake.cgroup_of = self.tree.cgroup_of
        self.proc = tmp_path / "proc-self-cgroup"
        self.proc.write_text(f"0::{OWN}\n")
        self.euid = 0
        monkeypatch.setattr(nvml_limits, "cgroup_files", lambda: self.tree.files)
        monkeypatch.setitem(sys.modules, "pynvml", self.fake.module)  # as the server's is

    def hard_caps(self, asked: str) -> HardCaps:
        """The server's hard caps asked for ``asked``, started on this machine."""
        caps = HardCaps(
            asked,
            self.tmp_path / "runtime",
            probe=probe(
                self.tmp_path,
                self.fake.module,
                euid=lambda: self.euid,
                cgroup_root=self.tree.mount,
                proc_self_cgroup=self.proc,
            ),
        )
        caps.start()
        return caps


@pytest.fixture
def machine(tmp_path, monkeypatch):
    return Machine(tmp_path, monkeypatch)


def test_nvml_runs_where_everything_is_there_and_auto_takes_it(machine):
    caps = machine.hard_caps("auto")
    try:
        assert (caps.mode.name, caps.problem, caps.lacks["nvml"]) == ("nvml", None, [])
        assert caps.to_json()["mechanism"]["state"] == "running"
        assert caps.describe().startswith("hard caps nvml: a driver limit per kernel")
    finally:
        caps.stop()
    assert machine.tree.leaves(machine.tree.own) == []  # nothing left behind


def lacks(machine, asked: str = "nvml") -> tuple[HardCaps, str]:
    caps = machine.hard_caps(asked)
    caps.stop()
    return caps, caps.reason or ""


def test_an_old_driver_is_said(machine):
    machine.fake.driver_version = "550.54.15"
    caps, reason = lacks(machine)
    assert caps.mode.name == "off"
    assert "driver 550.54.15 is older than R615, which brought NVML's memory limits" in reason
    assert caps.problem.startswith("'nvml' cannot be used here, so hard caps are off")


def test_bindings_without_the_calls_are_said(machine, monkeypatch):
    monkeypatch.delattr(machine.fake.module, "nvmlDeviceSetMemoryLimits_v1")
    _, reason = lacks(machine)
    assert "nvidia-ml-py has no nvmlDeviceSetMemoryLimits_v1 (13.615.71 or newer has)" in reason


def test_cgroup_v1_is_said(machine):
    (machine.tree.mount / "cgroup.controllers").unlink()  # what a v1 or hybrid mount looks like
    _, reason = lacks(machine)
    assert "no cgroup v2 hierarchy at" in reason and "(cgroup v1, or a hybrid layout)" in reason


def test_no_dmem_is_said(tmp_path, monkeypatch):
    machine = Machine(tmp_path, monkeypatch, root_controllers="cpu memory pids")
    _, reason = lacks(machine)
    assert f"the dmem controller is not available to the server's cgroup ({OWN})" in reason


def test_not_root_is_said(machine):
    machine.euid = 1000
    _, reason = lacks(machine)
    assert "the server does not run as root (uid 1000); setting limits needs root" in reason


def test_mig_is_said(machine):
    machine.fake.gpus[1].mig_enabled = True
    machine.fake.gpus[1].mig_devices = [FakeMig()]
    _, reason = lacks(machine)
    assert "GPU 1 (NVIDIA A100-SXM4-80GB) has MIG enabled" in reason


def test_a_server_that_shares_its_cgroup_is_said_and_auto_goes_on(machine):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        machine.tree.move(other.pid, machine.tree.own)
        caps, reason = lacks(machine, "auto")
    finally:
        other.kill()
        other.wait()
    assert caps.mode.name != "nvml"
    assert "nvml: it did not start (the server's cgroup" in reason
    assert "holds other processes (1, e.g. " in reason
    assert machine.tree.leaves(machine.tree.own) == []


def test_root_that_may_not_set_limits_is_said(machine):
    """Root in a container without the privilege NVML wants: the start's check finds it."""
    machine.fake.privileged = False
    caps, reason = lacks(machine)
    assert caps.mode.name == "off"
    assert "a limit cannot be set: setting an NVML memory limit needs root" in reason

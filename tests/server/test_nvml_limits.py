"""The ``nvml`` mechanism on the fake NVML (R615 bindings' signatures) and a temporary cgroup tree."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from jupyter_tfgpu.gpu import DeviceInfo, GiB, MiB
from jupyter_tfgpu.policy import AdminPolicy
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.server.hardcaps import cgexec, verified
from jupyter_tfgpu.server.hardcaps.host import CgroupFacts, GpuFacts, HostFacts, MemoryLimitCalls
from jupyter_tfgpu.server.hardcaps.mechanism import MechanismContext, MechanismError, StartingKernel
from jupyter_tfgpu.server.hardcaps.nvml_cgroups import ServerCgroups
from jupyter_tfgpu.server.hardcaps.nvml_limit_calls import NO_LIMIT, NvmlLimitCalls
from jupyter_tfgpu.server.hardcaps.nvml_limits import AS_ROOT, MECHANISM, NvmlMemoryLimits
from tests.fake_cgroup_tree import FakeCgroupTree
from tests.fake_nvml_limits import FakeOutOfMemory
from tests.fake_pynvml import FakeGpu, FakeNvml

OWN = "/system.slice/jupyter.service"
SLEEP = "import time; time.sleep(60)"


class Setup:
    """A fake NVML with two GPUs on driver 615, a cgroup tree, and the mechanism over both."""

    def __init__(self, tmp_path, driver: str = "615.71.09", privileged: bool = True, euid: int = 0):
        self.fake = FakeNvml(gpus=[FakeGpu(), FakeGpu()], driver_version=driver, privileged=privileged)
        self.tree = FakeCgroupTree(tmp_path)
        self.fake.cgroup_of = self.tree.cgroup_of
        self.gpus = [gpu.uuid for gpu in self.fake.gpus]
        self.devices = [
            DeviceInfo(index=i, uuid=uuid, name="NVIDIA A100", memory_total=80 * GiB)
            for i, uuid in enumerate(self.gpus)
        ]
        host = HostFacts(
            checked_at=0.0,
            driver=driver,
            gpus=tuple(GpuFacts(i, u, "NVIDIA A100", (8, 0), False, "default") for i, u in enumerate(self.gpus)),
            euid=euid,
            cgroup=CgroupFacts(str(self.tree.mount), True, OWN, True, ("dmem",)),
            memory_limits=MemoryLimitCalls(True, True),
        )
        self.reported: list = []
        self.context = MechanismContext(
            host=host,
            runtime_dir=tmp_path / "runtime",
            admin=AdminPolicy,
            report=lambda kernel_id, enforcement: self.reported.append((kernel_id, enforcement)),
            log=logging.getLogger("test"),
        )
        self.mechanism = NvmlMemoryLimits(
            self.context,
            NvmlLimitCalls(load=lambda: self.fake.module),
            ServerCgroups(self.tree.mount, self.tree.files),
        )

    def kernel(self, kernel_id: str = "k1", language: str = "python", **policy) -> StartingKernel:
        """A kernel about to start with this policy (a 4 GiB cap on GPU 1 unless said)."""
        policy = {"memory_limit_mb": 4096, "devices": [1], **policy}
        launch = Launch.render(policy, self.devices, kernel_id=kernel_id)
        return StartingKernel(kernel_id, launch, language, tuple(self.devices))

    def launch(self, prepared, *command: str) -> subprocess.Popen:
        """The kernel's process as the provisioner starts it: the wrapper, then its command."""
        return subprocess.Popen([*prepared.wrapper, *command])


@pytest.fixture
def setup(tmp_path):
    made = Setup(tmp_path)
    made.mechanism.start()
    yield made
    made.mechanism.stop()


def test_a_kernel_start_sets_its_cap_for_its_own_leaf_on_its_gpus_only(setup):
    # When a kernel with a 4 GiB cap on GPU 1 is prepared
    prepared = setup.mechanism.prepare(setup.kernel())
    # Then its leaf has a 4 GiB hard limit (soft 0) on GPU 1 and none on GPU 0
    leaf = setup.mechanism.cgroups.leaves()[0]
    assert setup.fake.limit_on(1, str(leaf)) == (0, 4096 * MiB)
    assert setup.fake.limit_on(0, str(leaf)) is None
    # And its command goes through the launcher, into that leaf, the server's Python isolated
    assert prepared.wrapper[:3] == (sys.executable, "-I", cgexec.__file__)
    assert prepared.wrapper[-2:] == (str(leaf), "--")
    assert dict(prepared.env) == {}


def test_the_level_is_framework_not_yet_shown_on_a_gpu_and_root_can_lift_it(setup):
    enforcement = setup.mechanism.prepare(setup.kernel()).enforcement
    assert (enforcement.level, enforcement.mechanism) == ("framework", MECHANISM)
    assert [g.gpu for g in enforcement.gpus] == [setup.gpus[1]]
    assert "no GPU run has shown it holding on driver branch R615" in enforcement.reason
    assert enforcement.reason.endswith(AS_ROOT)


def test_the_driver_level_once_verified_for_a_kernel_that_is_not_root(setup, monkeypatch):
    """The code path for level driver: a verified branch, and a kernel that cannot lift it."""
    monkeypatch.setattr(
        verified, "VERIFIED", (verified.Verified(MECHANISM, "615", "gpu-validation#nvml"),)
    )
    as_root = setup.mechanism.prepare(setup.kernel("root")).enforcement
    setup.mechanism.kernel_euid = 1000
    enforcement = setup.mechanism.prepare(setup.kernel("user")).enforcement
    assert (as_root.level, as_root.reason) == ("framework", AS_ROOT)
    assert (enforcement.level, enforcement.reason, enforcement.label) == ("driver", None, "hard cap")


def test_the_kernel_and_its_children_cannot_pass_the_cap(setup):
    """The limit holds in the fake: the kernel's process and a child it starts share 4 GiB."""
    prepared = setup.mechanism.prepare(setup.kernel())
    forks = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); time.sleep(60)"
    kernel = setup.launch(prepared, sys.executable, "-c", forks)
    try:
        leaf = setup.mechanism.cgroups.leaves()[0]
        child = wait_for(lambda: [p for p in setup.mechanism.cgroups.processes(leaf) if p != kernel.pid])[0]
        setup.fake.allocate(1, kernel.pid, 3 * GiB)
        with pytest.raises(FakeOutOfMemory):
            setup.fake.allocate(1, child, 2 * GiB)
        setup.fake.allocate(0, child, 8 * GiB)  # GPU 0 is not capped for it
        setup.fake.allocate(1, child, 1 * GiB)
    finally:
        kernel.kill()
        kernel.wait()
        subprocess.run(["kill", str(child)], check=False)


def test_release_clears_the_limits_and_removes_the_leaf(setup):
    setup.mechanism.prepare(setup.kernel())
    leaf = setup.mechanism.cgroups.leaves()[0]
    setup.mechanism.release("k1")
    assert not leaf.exists() and setup.fake.memory_limits == {}
    # Clearing went through NVML first, the documented way (soft 0, hard MAX)
    assert setup.fake.calls["nvmlDeviceSetMemoryLimits_v1"] >= 2


def test_a_restart_gets_a_new_leaf_and_the_old_one_goes(setup):
    setup.mechanism.prepare(setup.kernel())
    first = setup.mechanism.cgroups.leaves()
    setup.mechanism.release("k1")
    setup.mechanism.prepare(setup.kernel(memory_limit_mb=2048))
    second = setup.mechanism.cgroups.leaves()
    assert first != second and len(second) == 1
    assert setup.fake.limit_on(1, str(second[0])) == (0, 2048 * MiB)


def test_a_leaf_with_a_detached_child_keeps_its_limit_until_the_child_exits(setup):
    # Given a kernel whose child outlives it in its leaf
    setup.mechanism.prepare(setup.kernel())
    leaf = setup.mechanism.cgroups.leaves()[0]
    child = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        (leaf / "cgroup.procs").write_text(f"{child.pid}\n")
        # When the kernel is released
        setup.mechanism.release("k1")
        # Then the leaf stays with its limit, and the status says one is left
        assert leaf.exists() and setup.fake.limit_on(1, str(leaf)) == (0, 4096 * MiB)
        assert setup.mechanism.status().facts["left_with_processes"] == 1
    finally:
        child.kill()
        child.wait()
    # And once it exited, the next kernel start removes it
    setup.mechanism.prepare(setup.kernel("k2"))
    assert not leaf.exists() and setup.mechanism.status().facts["left_with_processes"] == 0


def test_a_limit_that_cannot_be_set_undoes_the_others_and_says_which_gpu(setup):
    # Given GPU 1 refuses limits
    setup.fake.inject("nvmlDeviceSetMemoryLimits_v1", setup.fake.module.NVML_ERROR_NOT_SUPPORTED, gpu=1)
    # When a kernel on both GPUs is prepared
    with pytest.raises(MechanismError, match=r"GPU .*: this GPU takes no NVML memory limit"):
        setup.mechanism.prepare(setup.kernel(devices=[0, 1]))
    # Then nothing is left: no leaf, no limit on GPU 0
    assert setup.mechanism.cgroups.leaves() == [] and setup.fake.memory_limits == {}


def test_a_kernel_without_a_cap_or_gpus_gets_no_leaf(setup):
    no_cap = setup.mechanism.prepare(setup.kernel("a", memory_limit_mb=None))
    cpu_only = setup.mechanism.prepare(setup.kernel("b", devices=[]))
    assert no_cap.wrapper == () and cpu_only.wrapper == ()
    assert (no_cap.enforcement.level, cpu_only.enforcement.level) == ("none", "framework")
    assert setup.mechanism.cgroups.leaves() == []


def test_a_non_python_kernel_is_held_by_the_limit_too(setup):
    """The cgroup holds whatever the kernel runs: the framework settings' gap is closed."""
    enforcement = setup.mechanism.prepare(setup.kernel(language="R")).enforcement
    assert enforcement.mechanism == MECHANISM


def test_a_launcher_that_could_not_join_makes_the_next_start_cooperative(setup):
    # Given a kernel whose launcher cannot join its leaf (its cgroup.procs is unwritable)
    prepared = setup.mechanism.prepare(setup.kernel())
    leaf = setup.mechanism.cgroups.leaves()[0]
    (leaf / "cgroup.procs").unlink()
    (leaf / "cgroup.procs").mkdir()
    done = subprocess.run([*prepared.wrapper, sys.executable, "-c", "pass"], timeout=60)
    assert done.returncode == cgexec.JOIN_FAILED
    (leaf / "cgroup.procs").rmdir()
    (leaf / "cgroup.procs").write_text("")
    # When the kernel is released (its process died) and restarted
    setup.mechanism.release("k1")
    with pytest.raises(MechanismError, match="at its last start, the kernel could not join its cgroup"):
        setup.mechanism.prepare(setup.kernel())
    # Then the start after it tries the limit again
    assert setup.mechanism.prepare(setup.kernel()).wrapper


def test_a_fifo_or_huge_file_in_place_of_a_launchers_word_is_not_waited_on(setup):
    # Given a kernel whose failure file was replaced by a FIFO no one writes to
    setup.mechanism.prepare(setup.kernel())
    leaf = setup.mechanism.cgroups.leaves()[0]
    told = setup.mechanism.failures / f"{leaf.name}.failed"
    os.mkfifo(told)
    # When it is released, it is not waited on, and the next start says the join failed
    setup.mechanism.release("k1")
    with pytest.raises(MechanismError, match="^at its last start, it could not join$"):
        setup.mechanism.prepare(setup.kernel())
    # And a huge file there is read only for its first bytes
    setup.mechanism.prepare(setup.kernel())
    leaf = setup.mechanism.cgroups.leaves()[0]
    (setup.mechanism.failures / f"{leaf.name}.failed").write_text("x" * 10_000_000)
    setup.mechanism.release("k1")
    with pytest.raises(MechanismError) as refused:
        setup.mechanism.prepare(setup.kernel())
    assert str(refused.value) == "at its last start, " + "x" * 500


def test_stop_removes_everything_and_puts_the_server_back(tmp_path):
    made = Setup(tmp_path)
    made.mechanism.start()
    made.mechanism.prepare(made.kernel())
    made.mechanism.stop()
    assert made.tree.leaves(made.tree.own) == [] and made.fake.memory_limits == {}
    assert made.tree.members(made.tree.own) == [made.mechanism.cgroups.pid]
    assert made.mechanism.status().state == "stopped"
    assert not made.fake.initialized


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"privileged": False}, "a limit cannot be set: setting an NVML memory limit needs root"),
        ({"driver": "550.54.15"}, "the driver has no NVML memory limits"),
    ],
)
def test_a_start_where_limits_cannot_be_set_fails_and_leaves_nothing(tmp_path, kwargs, said):
    made = Setup(tmp_path, **kwargs)
    with pytest.raises(MechanismError, match=said):
        made.mechanism.start()
    assert made.tree.leaves(made.tree.own) == []
    assert made.tree.members(made.tree.own) == [made.mechanism.cgroups.pid]
    assert not made.fake.initialized


def test_a_server_cgroup_with_other_processes_fails_the_start_in_words(tmp_path):
    made = Setup(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        made.tree.move(other.pid, made.tree.own)
        with pytest.raises(MechanismError, match="holds other processes"):
            made.mechanism.start()
    finally:
        other.kill()
        other.wait()


def test_status_is_read_from_memory(setup):
    setup.mechanism.prepare(setup.kernel())
    status = setup.mechanism.status()
    assert status.state == "running" and status.facts["kernels"] == 1
    assert status.facts["cgroup"].endswith(f"tfgpu-{setup.mechanism.cgroups.pid}")


def test_clearing_uses_nvmls_documented_values():
    assert NO_LIMIT == 2**64 - 1


def wait_for(check, timeout: float = 10.0):
    """``check()`` once it is truthy (real processes start in their own time)."""
    import time

    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result

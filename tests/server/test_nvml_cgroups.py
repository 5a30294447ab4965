"""The server's cgroups for NVML memory limits, on a temporary cgroup v2 tree with cgroupfs's rules."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from jupyter_tfgpu.server.hardcaps.nvml_cgroups import CgroupUnavailable, ServerCgroups
from tests.fake_cgroup_tree import FakeCgroupTree


SLEEP = "import time; time.sleep(60)"


def text(path) -> str:
    """A file's text, stripped."""
    return path.read_text().strip()


def wait_for(check, timeout: float = 10.0):
    """``check()`` once it is truthy (real processes start in their own time)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result


@pytest.fixture
def sleeper():
    """A process that runs until the test ends it."""
    process = subprocess.Popen([sys.executable, "-c", SLEEP])
    yield process
    process.kill()
    process.wait()


def test_open_makes_the_parent_moves_the_server_and_enables_dmem_below_it(tmp_path):
    # Given a tree whose server cgroup S holds only the server, with dmem delegated to it
    tree = FakeCgroupTree(tmp_path)
    cgroups = ServerCgroups(tree.mount, tree.files)
    # When the server's cgroups open
    assert cgroups.open() == []
    # Then S/tfgpu-<pid>/server holds the server, S holds nothing, and dmem reaches the leaves
    parent = tree.own / f"tfgpu-{cgroups.pid}"
    assert cgroups.parent == parent
    assert tree.members(parent / "server") == [cgroups.pid] and tree.members(tree.own) == []
    assert text(tree.own / "cgroup.subtree_control") == "dmem"
    assert text(parent / "cgroup.subtree_control") == "dmem"
    leaf = cgroups.make_leaf("k/1")
    assert leaf.name == "kernel-k_1-1" and (leaf / "dmem.max").exists()


def test_close_undoes_everything_and_puts_the_server_back(tmp_path):
    tree = FakeCgroupTree(tmp_path)
    cgroups = ServerCgroups(tree.mount, tree.files)
    cgroups.open()
    cgroups.make_leaf("k1")
    # When it closes with no process left in the kernels' leaves
    assert cgroups.close() == []
    # Then the tree is as it was
    assert [p.name for p in tree.leaves(tree.own)] == []
    assert text(tree.own / "cgroup.subtree_control") == ""
    assert tree.members(tree.own) == [cgroups.pid]


def test_a_leaf_with_a_process_left_stays_until_the_process_is_gone(tmp_path, sleeper):
    # Given a kernel's leaf that a detached child is still in
    tree = FakeCgroupTree(tmp_path)
    cgroups = ServerCgroups(tree.mount, tree.files)
    cgroups.open()
    leaf = cgroups.make_leaf("k1")
    (leaf / "cgroup.procs").write_text(f"{sleeper.pid}\n")  # as the launcher joins it
    # When it is removed, and the server closes
    assert cgroups.remove(leaf) == [sleeper.pid]
    left = cgroups.close()
    # Then both say so and keep the leaf (its limits with it) and the parent
    assert left == [str(leaf)] and leaf.is_dir() and cgroups.parent is not None
    # And once the process is gone, the removal goes through
    sleeper.kill()
    sleeper.wait()
    assert cgroups.close() == [] and not leaf.exists()


def test_a_child_of_a_kernel_is_in_its_leaf_and_keeps_it_busy(tmp_path):
    """A process the kernel forks stays in the kernel's cgroup, after the kernel too."""
    tree = FakeCgroupTree(tmp_path)
    cgroups = ServerCgroups(tree.mount, tree.files)
    cgroups.open()
    leaf = cgroups.make_leaf("k1")
    forks = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {!r}]); time.sleep(60)"
    kernel = subprocess.Popen([sys.executable, "-c", forks.format(SLEEP)])
    child = None
    try:
        (leaf / "cgroup.procs").write_text(f"{kernel.pid}\n")  # as the launcher joins it
        child = wait_for(lambda: psutil.Process(kernel.pid).children()).pop().pid
        assert sorted(cgroups.processes(leaf)) == sorted([kernel.pid, child])
        assert tree.cgroup_of(child) == str(leaf)
        kernel.kill()
        kernel.wait()
        assert cgroups.remove(leaf) == [child]
    finally:
        kernel.kill()
        kernel.wait()
        if child is not None:
            psutil.Process(child).kill()


def test_a_server_cgroup_holding_other_processes_is_said_and_nothing_changes(tmp_path, sleeper):
    # Given S holds another process besides the server
    tree = FakeCgroupTree(tmp_path)
    tree.move(sleeper.pid, tree.own)
    cgroups = ServerCgroups(tree.mount, tree.files)
    # When the cgroups open, they cannot enable dmem below S
    with pytest.raises(CgroupUnavailable, match=r"holds other processes \(1, e.g. \d+\)"):
        cgroups.open()
    # Then everything is as it was: no parent, the server back in S, no controller enabled
    assert tree.leaves(tree.own) == []
    assert sorted(tree.members(tree.own)) == sorted([cgroups.pid, sleeper.pid])
    assert text(tree.own / "cgroup.subtree_control") == ""


def test_cgroup_v1_is_said(tmp_path):
    (tmp_path / "cgroup").mkdir()  # a v1 or hybrid mount has no cgroup.controllers at its top
    with pytest.raises(CgroupUnavailable, match="cgroup v2 is not mounted at .*cgroup v1"):
        ServerCgroups(tmp_path / "cgroup").open()


def test_a_kernel_without_dmem_is_said(tmp_path):
    tree = FakeCgroupTree(tmp_path, root_controllers="cpu memory pids")
    with pytest.raises(CgroupUnavailable, match="no dmem controller.*Linux 6.14"):
        ServerCgroups(tree.mount, tree.files).open()


def test_dmem_not_delegated_to_the_servers_cgroup_is_said(tmp_path):
    tree = FakeCgroupTree(tmp_path, delegate_dmem=False)
    with pytest.raises(CgroupUnavailable, match="not enabled for the server's cgroup"):
        ServerCgroups(tree.mount, tree.files).open()
    assert tree.leaves(tree.own) == []


def test_what_a_server_that_is_gone_left_is_removed_at_open(tmp_path, sleeper):
    # Given a dead server's parent with an empty leaf, and another with a process still in it
    tree = FakeCgroupTree(tmp_path)
    gone = tree.own / "tfgpu-999999999"
    for name in ("", "server", "kernel-a-1"):
        tree.make(gone / name if name else gone)
    busy = tree.own / "tfgpu-999999998"
    tree.make(busy)
    tree.make(busy / "kernel-b-1")
    (busy / "kernel-b-1" / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    cgroups = ServerCgroups(tree.mount, tree.files, alive=lambda pid: False)
    # When this server's cgroups open
    left = cgroups.open()
    # Then the empty one is gone and the busy leaf is reported, kept
    assert not gone.exists()
    assert left == [f"{busy / 'kernel-b-1'} still holds processes"]
    assert (busy / "kernel-b-1").is_dir()


def test_another_running_servers_parent_is_left_alone(tmp_path):
    tree = FakeCgroupTree(tmp_path)
    other = tree.own / "tfgpu-12345"
    tree.make(other)
    ServerCgroups(tree.mount, tree.files, alive=lambda pid: pid == 12345).open()
    assert other.is_dir()

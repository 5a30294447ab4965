"""The kernel's launcher joins the kernel's cgroup before any kernel code runs, or starts nothing."""

from __future__ import annotations

import subprocess
import sys

from jupyter_tfgpu.server.hardcaps import cgexec
from tests.fake_cgroup_tree import FakeCgroupTree

PRINT_PID = "import os; print(os.getpid())"


def launch(folder, *command: str) -> subprocess.CompletedProcess:
    """Run the launcher as the provisioner does: a file, in the server's Python, isolated."""
    return subprocess.run(
        [sys.executable, "-I", cgexec.__file__, str(folder), "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_kernel_runs_in_the_launchers_process_inside_the_cgroup(tmp_path):
    # Given a kernel's leaf
    tree = FakeCgroupTree(tmp_path)
    leaf = tree.own / "kernel-1"
    tree.make(leaf)
    # When the launcher starts a command there
    done = launch(leaf, sys.executable, "-c", PRINT_PID)
    # Then the command ran as the very process the cgroup lists: it was in before it ran
    assert done.returncode == 0, done.stderr
    assert (leaf / "cgroup.procs").read_text().split() == [done.stdout.strip()]


def test_a_cgroup_it_cannot_join_starts_nothing_and_says_why(tmp_path):
    # Given a leaf whose cgroup.procs cannot be written (a folder stands in for it)
    leaf = tmp_path / "kernel-1"
    (leaf / "cgroup.procs").mkdir(parents=True)
    marker = tmp_path / "ran"
    # When the launcher is asked to start a command there
    done = launch(leaf, sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    # Then the command never ran, and the exit status and message say so
    assert done.returncode == cgexec.JOIN_FAILED
    assert "could not join its cgroup" in done.stderr and str(leaf) in done.stderr
    assert not marker.exists()


def test_a_missing_cgroup_is_a_failure_to_join(tmp_path):
    done = launch(tmp_path / "gone", sys.executable, "-c", "pass")
    assert done.returncode == cgexec.JOIN_FAILED


def test_a_command_that_cannot_run_says_so(tmp_path):
    tree = FakeCgroupTree(tmp_path)
    leaf = tree.own / "kernel-1"
    tree.make(leaf)
    done = launch(leaf, str(tmp_path / "no-such-kernel"))
    assert done.returncode == cgexec.EXEC_FAILED and "cannot run the kernel command" in done.stderr


def test_without_a_command_it_prints_its_usage(tmp_path):
    done = launch(tmp_path)
    assert done.returncode == 2 and "usage" in done.stderr


def test_it_imports_nothing_of_the_package():
    """It runs before every kernel, as a file: the standard library only."""
    source = open(cgexec.__file__, encoding="utf-8").read()
    assert "jupyter_tfgpu" not in source.replace("jupyter-tfgpu", "")


def test_a_failure_to_join_is_told_to_the_server_in_the_file_it_names(tmp_path):
    told = tmp_path / "kernel-1.failed"
    done = subprocess.run(
        [sys.executable, "-I", cgexec.__file__, "--failed", str(told), str(tmp_path / "gone"), "--",
         sys.executable, "-c", "pass"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == cgexec.JOIN_FAILED
    assert told.read_text().startswith(f"the kernel could not join its cgroup {tmp_path / 'gone'}")

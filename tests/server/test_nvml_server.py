"""Mode ``nvml`` on a real server and real kernels: the fake NVML (R615 bindings' signatures) and a
temporary cgroup tree with cgroupfs's rules stand for the driver and /sys/fs/cgroup.

Each kernel start gets its own leaf cgroup, joined by its launcher before the kernel's code runs,
with an NVML limit on each of its GPUs; a restart, a shutdown and a failed start clear it; a
`!python` child is in the kernel's leaf and cannot pass the cap; a launcher that cannot join
makes the kernel start again with its framework settings, said; a cap changed in the caps file
reaches the limit at the kernel's restart; the server's stop leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from jupyter_client.provisioning import LocalProvisioner

import jupyter_tfgpu.server.caps_watcher as caps_watcher_module
from jupyter_tfgpu.gpu import MiB
from jupyter_tfgpu.server.hardcaps import host as host_module
from jupyter_tfgpu.server.hardcaps import nvml_limits
from tests.fake_cgroup_tree import FakeCgroupTree
from tests.fake_nvml_limits import FakeOutOfMemory
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.kernel_helpers import poll, run_code, start_session

OWN = "/system.slice/jupyter.service"
CAPS = {"max_memory_mb": 8192}


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """Two A100s on driver 615, the caller root."""
    return FakeNvml([FakeGpu(), FakeGpu()], driver_version="615.71.09", privileged=True)


@pytest.fixture
def tree(tmp_path, monkeypatch, fake_nvml) -> FakeCgroupTree:
    """/sys/fs/cgroup for the server: cgroup v2 with dmem, the server alone in its cgroup, root."""
    made = FakeCgroupTree(tmp_path / "sys")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{OWN}\n")
    monkeypatch.setattr(host_module, "CGROUP_ROOT", made.mount)
    monkeypatch.setattr(host_module, "PROC_SELF_CGROUP", proc)
    monkeypatch.setattr(host_module, "_euid", lambda: 0)
    monkeypatch.setattr(nvml_limits, "cgroup_files", lambda: made.files)
    monkeypatch.setattr(caps_watcher_module, "POLL_SECONDS", 0.05)
    fake_nvml.cgroup_of = made.cgroup_of
    return made


@pytest.fixture
def caps_path(tmp_path) -> Path:
    """The admin's caps file."""
    folder = tmp_path / "admin"
    folder.mkdir(mode=0o755)
    path = folder / "tfgpu-caps.json"
    path.write_text(json.dumps(CAPS))
    path.chmod(0o644)
    return path


@pytest.fixture
def tfgpu_config(caps_path):
    """NVML over the fake, hard caps nvml, the caps file holding max_memory_mb."""
    return {
        "backend": "nvml",
        "sample_interval": 0.2,
        "process_interval": 0.4,
        "hard_caps": "nvml",
        "caps_file": str(caps_path),
    }


@pytest.fixture
def jp_server_config(jp_server_config, tree):
    """The server is made only once the machine is in place; a dead kernel is noticed fast."""
    return {**jp_server_config, "KernelRestarter": {"time_to_dead": 0.3}}


def parent(tree: FakeCgroupTree) -> Path:
    """This server's parent cgroup."""
    return tree.own / f"tfgpu-{os.getpid()}"


def leaves(tree: FakeCgroupTree) -> list[Path]:
    """The kernels' leaves now."""
    folder = parent(tree)
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "server") if folder.is_dir() else []


async def view(jp_fetch, kernel_id: str) -> dict:
    """GET kernels/{id}."""
    return json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)


async def capped(jp_fetch, notebook: str = "nb.ipynb", limit: int = 2048, devices=(1,)) -> str:
    """A kernel started for a notebook capped at ``limit`` MiB on ``devices``."""
    body = json.dumps({"memory_limit_mb": limit, "devices": list(devices)})
    await jp_fetch("tfgpu", "api", "policies", notebook, method="PUT", body=body)
    return (await start_session(jp_fetch, notebook))["kernel"]["id"]


def kernel_pid(jp_serverapp, kernel_id: str) -> int:
    """The kernel's process."""
    return jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid


async def test_a_kernel_runs_in_its_own_cgroup_with_its_cap_set_on_its_gpus(
    jp_fetch, jp_serverapp, tree, fake_nvml
):
    # Given a server in mode nvml
    status = json.loads((await jp_fetch("tfgpu", "api", "status")).body)["hard_caps"]
    assert (status["in_force"], status["mechanism"]["state"]) == ("nvml", "running")
    assert status["mechanism"]["facts"]["cgroup"] == str(parent(tree))
    # When a kernel capped at 2 GiB on GPU 1 starts
    kernel_id = await capped(jp_fetch)
    await run_code(jp_serverapp, kernel_id, "pass")
    # Then its process is in its own leaf, which has the 2 GiB limit on GPU 1 and none on GPU 0
    [leaf] = leaves(tree)
    assert kernel_pid(jp_serverapp, kernel_id) in tree.members(leaf)
    assert fake_nvml.limit_on(1, str(leaf)) == (0, 2048 * MiB)
    assert fake_nvml.limit_on(0, str(leaf)) is None
    # And GET kernels/{id} says how: the NVML limit on GPU 1, cooperative, and why
    enforcement = (await view(jp_fetch, kernel_id))["applied"]["enforcement"]
    assert [(g["gpu"], g["mechanism"]) for g in enforcement["gpus"]] == [
        (fake_nvml.gpus[1].uuid, "nvml_memory_limit")
    ]
    assert enforcement["level"] == "framework"
    assert "no GPU run has shown it holding on driver branch R615" in enforcement["reason"]
    assert "the kernel runs as root" in enforcement["reason"]


async def test_a_python_child_of_the_kernel_is_in_its_cgroup_and_cannot_pass_the_cap(
    jp_fetch, jp_serverapp, tree, fake_nvml, tmp_path
):
    # Given a capped kernel
    kernel_id = await capped(jp_fetch)
    await run_code(jp_serverapp, kernel_id, "pass")
    [leaf] = leaves(tree)
    # When a cell runs `!python ...`, which says its pid and runs a while
    said = tmp_path / "child.pid"
    code = f"!{sys.executable} -c \"import os, time; open('{said}', 'w').write(str(os.getpid())); time.sleep(3)\""
    cell = asyncio.ensure_future(run_code(jp_serverapp, kernel_id, code))
    child = int(await poll(lambda: asyncio.sleep(0, said.exists() and said.read_text()), timeout=30))
    # Then the child is in the kernel's leaf, and what it allocates counts against the cap
    assert child in tree.members(leaf) and tree.cgroup_of(child) == str(leaf)
    fake_nvml.allocate(1, kernel_pid(jp_serverapp, kernel_id), 1536 * MiB)
    with pytest.raises(FakeOutOfMemory):
        fake_nvml.allocate(1, child, 1024 * MiB)
    fake_nvml.allocate(1, child, 512 * MiB)
    await cell


async def test_a_restart_moves_the_kernel_to_a_new_leaf_and_a_shutdown_clears_all(
    jp_fetch, jp_serverapp, tree, fake_nvml
):
    kernel_id = await capped(jp_fetch)
    await run_code(jp_serverapp, kernel_id, "pass")
    [first] = leaves(tree)
    manager = jp_serverapp.kernel_manager
    # When it restarts
    await manager.restart_kernel(kernel_id, now=True)
    await run_code(jp_serverapp, kernel_id, "pass")
    # Then it is in a new leaf with the limit; the old leaf and its limit are gone
    [second] = leaves(tree)
    assert second != first and not first.exists()
    assert kernel_pid(jp_serverapp, kernel_id) in tree.members(second)
    assert list(fake_nvml.memory_limits) == [(1, str(second))]
    # When it is shut down, nothing of it is left
    await manager.shutdown_kernel(kernel_id, now=True)
    assert leaves(tree) == [] and fake_nvml.memory_limits == {}


async def test_a_start_that_fails_leaves_no_cgroup_and_no_limit(
    jp_fetch, jp_serverapp, tree, fake_nvml, monkeypatch
):
    # Given the kernel's process cannot be started, once
    real = LocalProvisioner.launch_kernel

    async def fails_once(self, cmd, **kwargs):
        monkeypatch.setattr(LocalProvisioner, "launch_kernel", real)
        raise OSError("cannot start the kernel")

    monkeypatch.setattr(LocalProvisioner, "launch_kernel", fails_once)
    manager = jp_serverapp.kernel_manager
    before = set(manager.list_kernel_ids())
    # When a kernel is started, it fails
    with pytest.raises(OSError, match="cannot start the kernel"):
        await manager.start_kernel(kernel_name="python3")
    # Then what was prepared for it is undone
    assert leaves(tree) == [] and fake_nvml.memory_limits == {}
    # (jupyter_client keeps a failed start as pending, and shutdown_all then fails on it)
    for kernel_id in set(manager._pending_kernels) - before:
        manager._pending_kernels.pop(kernel_id, None)
    # And the next start works
    kernel_id = await capped(jp_fetch)
    await run_code(jp_serverapp, kernel_id, "pass")
    assert len(leaves(tree)) == 1


async def test_a_kernel_that_cannot_join_its_cgroup_starts_again_cooperative_saying_why(
    jp_fetch, jp_serverapp, tree, fake_nvml
):
    # Given leaves no process can join
    tree.unjoinable = True
    # When a capped kernel starts: its launcher starts nothing, and jupyter restarts it
    kernel_id = await capped(jp_fetch)

    async def cooperative():
        enforcement = (await view(jp_fetch, kernel_id))["applied"]["enforcement"]
        return enforcement if enforcement["mechanism"] == "framework_settings" else None

    enforcement = await poll(cooperative, timeout=60)
    # Then it runs, with its framework settings, and the reason says what happened
    assert await run_code(jp_serverapp, kernel_id, "print('ran')") == "ran\n"
    assert enforcement["level"] == "framework"
    assert enforcement["reason"].startswith(
        "the nvml limit could not be set (at its last start, the kernel could not join its cgroup"
    )
    assert leaves(tree) == [] and fake_nvml.memory_limits == {}


async def test_a_cap_lowered_in_the_caps_file_reaches_the_limit_at_the_restart(
    jp_fetch, jp_serverapp, tree, fake_nvml, caps_path
):
    # Given a kernel capped at 4 GiB
    kernel_id = await capped(jp_fetch, limit=4096)
    await run_code(jp_serverapp, kernel_id, "pass")
    [leaf] = leaves(tree)
    # When the admin lowers the cap to 1 GiB
    new = caps_path.with_name("new.json")
    new.write_text(json.dumps({"max_memory_mb": 1024}))
    new.chmod(0o644)
    os.replace(new, caps_path)

    async def lowered():
        config = json.loads((await jp_fetch("tfgpu", "api", "config")).body)
        return config["max_memory_mb"] == 1024

    await poll(lowered, timeout=20)
    # Then the running kernel keeps the limit it started with, and is due a restart
    assert fake_nvml.limit_on(1, str(leaf)) == (0, 4096 * MiB)
    assert (await view(jp_fetch, kernel_id))["restart_required"] is True
    # And its restart gets the new cap as its limit
    await jp_serverapp.kernel_manager.restart_kernel(kernel_id, now=True)
    await run_code(jp_serverapp, kernel_id, "pass")
    [new_leaf] = leaves(tree)
    assert fake_nvml.limit_on(1, str(new_leaf)) == (0, 1024 * MiB)


async def test_the_servers_stop_leaves_nothing_behind(jp_fetch, jp_serverapp, tree, fake_nvml, tmp_path):
    kernel_id = await capped(jp_fetch)
    await run_code(jp_serverapp, kernel_id, "pass")
    services = jp_serverapp.web_app.settings["tfgpu_services"]
    runtime = services.hard_caps.runtime_dir
    assert runtime.is_dir()
    # When the extension stops (kernels first, then the mechanism)
    await jp_serverapp.web_app.settings["jupyter_tfgpu"].stop_extension()
    # Then no cgroup of its own is left, the server is back in its cgroup, limits are gone
    assert tree.leaves(tree.own) == [] and fake_nvml.memory_limits == {}
    assert tree.members(tree.own) == [os.getpid()]
    assert (tree.own / "cgroup.subtree_control").read_text().split() == []
    assert not runtime.exists()

"""MPS mode on a real server: the fake NVML, the fake nvidia-cuda-mps-control on PATH, real
kernels. The daemon starts with the server, holds the admin's cap, gives each kernel its own,
is watched and restarted, follows a new cap, terminates a kernel's clients before its signals,
and is gone with the server; attribution under MPS; the platform's daemon (Kubernetes)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from jupyter_tfgpu.server.hardcaps import mps
from jupyter_tfgpu.server.hardcaps.mps_control import MpsControl
from tests.fake_mps import CONNECT_FROM_KERNEL, CONTROL, FakeMpsDaemon, alive, fake_mps_processes, put_on_path
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess
from tests.kernel_helpers import poll, run_json, start_session
from tests.server.spec_helpers import get_checked as get

READ_ENV = """
import json, os
names = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
         "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_VISIBLE_DEVICES")
print(json.dumps({n: os.environ.get(n) for n in names}))
"""


# A process the kernel starts (as `!python train.py` would) connecting to MPS: prints its PID.
CONNECT_CHILD = """
import json, os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
line = json.dumps({"pid": child.pid, "env": dict(os.environ)})
subprocess.run(["nvidia-cuda-mps-control"], input=f"fake_connect {line}\\n", text=True,
               capture_output=True, timeout=30, check=True)
print(json.dumps(child.pid))
"""


@pytest.fixture(autouse=True)
def fake_mps(monkeypatch):
    """The fake daemon on PATH, watched every 0.2 s."""
    put_on_path(monkeypatch)
    monkeypatch.setattr(mps, "WATCH_SECONDS", 0.2)


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """Two A100s (Ampere: MPS memory limits apply), no process yet."""
    return FakeNvml(gpus=[FakeGpu(), FakeGpu()])


@pytest.fixture
def tfgpu_config(request):
    """NVML over the fake, hard caps as the test's parameter (mps unless given), a cap of 8 GiB."""
    return {
        "backend": "nvml",
        "sample_interval": 0.1,
        "process_interval": 0.2,
        "hard_caps": getattr(request, "param", "mps"),
        "max_memory_mb": 8192,
        "on_config_error": "warn",
    }


async def capped_kernel(jp_fetch, notebook="capped.ipynb", limit=2048, **policy) -> str:
    body = {"memory_limit_mb": limit, "devices": [0], **policy}
    await jp_fetch("tfgpu", "api", "policies", notebook, method="PUT", body=json.dumps(body))
    return (await start_session(jp_fetch, notebook))["kernel"]["id"]


def services(serverapp):
    return serverapp.web_app.settings["tfgpu_services"]


def server_daemon(serverapp) -> FakeMpsDaemon:
    return FakeMpsDaemon(services(serverapp).hard_caps.mechanism.daemon.pipe_dir)


async def kernel_pid(serverapp, kernel_id) -> int:
    return await run_json(serverapp, kernel_id, "import json, os; print(json.dumps(os.getpid()))")


async def test_the_daemon_holds_the_admins_cap_and_each_kernel_its_own(jp_fetch, jp_serverapp, fake_nvml):
    # Given a server in mode mps
    status = (await get(jp_fetch, "status"))["hard_caps"]
    assert (status["in_force"], status["mechanism"]["state"]) == ("mps", "running")
    daemon = server_daemon(jp_serverapp)
    uuids = [gpu.uuid for gpu in fake_nvml.gpus]
    # Then its daemon runs with the admin's cap as every GPU's default limit
    assert status["mechanism"]["facts"]["pid"] == daemon.pid
    assert daemon.state()["defaults"]["device_pinned_mem_limit"] == {u: 8192 for u in uuids}
    # When a kernel starts with a cap of 2048 MiB and half the SMs, on GPU 0
    kernel_id = await capped_kernel(jp_fetch, compute_percent=50)
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    # Then its environment makes it a client held at its own cap on its GPU alone
    assert env == {
        "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe_dir),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"{uuids[0]}=2048M",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_VISIBLE_DEVICES": uuids[0],
    }
    # And when its first CUDA call connects, the daemon holds it at 2048 MiB, 50% of the SMs
    await run_json(jp_serverapp, kernel_id, CONNECT_FROM_KERNEL)
    client = daemon.clients()[await kernel_pid(jp_serverapp, kernel_id)]
    assert client["device_pinned_mem_limit"] == {uuids[0]: 2048}
    assert client["active_thread_percentage"] == 50.0
    # And GET kernels/{id} says how: framework level, by MPS, and why not driver
    view = await get(jp_fetch, "kernels", kernel_id)
    assert (view["enforcement"]["level"], view["enforcement"]["mechanism"]) == ("framework", "mps")
    assert view["enforcement"]["reason"] == mps.LIFTABLE


async def test_kernels_are_attributed_through_the_mps_list(jp_fetch, jp_serverapp, fake_nvml):
    # Given a kernel that is an MPS client on GPU 0, NVML naming the server in its compute list
    daemon = server_daemon(jp_serverapp)
    kernel_id = await capped_kernel(jp_fetch)
    server = await run_json(jp_serverapp, kernel_id, CONNECT_FROM_KERNEL)
    pid = await kernel_pid(jp_serverapp, kernel_id)
    assert daemon.servers() == [server]
    gpu = fake_nvml.gpus[0]
    gpu.processes = [FakeProcess(pid=server, used_memory=3 * 2**30)]
    gpu.mps_processes = [FakeProcess(pid=pid, used_memory=2**30)]

    # When the processes are read / Then the kernel holds its client's memory
    async def attributed():
        view = await get(jp_fetch, "kernels", kernel_id)
        return view["gpu_memory"]["total"] == 2**30 and view

    await poll(attributed, timeout=30)
    # And GET gpus shows the server as the MPS server, and the client as the kernel's
    rows = {p["pid"]: p for p in (await get(jp_fetch, "gpus"))["gpus"][0]["processes"]}
    assert rows[server]["mps"] == "server" and rows[server]["kernel_id"] is None
    assert (rows[pid]["mps"], rows[pid]["kernel_id"]) == ("client", kernel_id)


async def test_restart_and_shutdown_terminate_the_kernels_clients_before_the_signals(jp_fetch, jp_serverapp):
    # Given a kernel that is an MPS client
    daemon = server_daemon(jp_serverapp)
    kernel_id = await capped_kernel(jp_fetch)
    server = await run_json(jp_serverapp, kernel_id, CONNECT_FROM_KERNEL)
    first = await kernel_pid(jp_serverapp, kernel_id)
    manager = jp_serverapp.kernel_manager
    # When it restarts, connects again, then shuts down
    await manager.restart_kernel(kernel_id, now=True)
    await run_json(jp_serverapp, kernel_id, CONNECT_FROM_KERNEL)
    second = await kernel_pid(jp_serverapp, kernel_id)
    await manager.shutdown_kernel(kernel_id, now=True)
    # Then each time its client was terminated while it was still alive, before its signals
    assert daemon.state()["terminated"] == [
        {"server": server, "client": first, "alive": True},
        {"server": server, "client": second, "alive": True},
    ]


async def test_a_daemon_that_died_is_restarted_and_shown(jp_fetch, jp_serverapp):
    # Given the daemon killed while a kernel runs
    kernel_id = await capped_kernel(jp_fetch)
    daemon = server_daemon(jp_serverapp)
    first = daemon.kill()

    # When the watcher finds it / Then GET status shows the restart, the daemon runs again
    async def restarted():
        status = (await get(jp_fetch, "status"))["hard_caps"]["mechanism"]
        return status["facts"]["restarts"] == 1 and status["state"] == "running" and status

    status = await poll(restarted, timeout=30)
    assert daemon.running and daemon.pid != first
    assert "is gone" in status["facts"]["last_error"]
    assert daemon.state()["defaults"]["device_pinned_mem_limit"]
    # And the kernel, which keeps its variables, is held by MPS again
    view = await get(jp_fetch, "kernels", kernel_id)
    assert view["enforcement"]["mechanism"] == "mps"
    # And a kernel started now connects to the new daemon
    second = await capped_kernel(jp_fetch, "second.ipynb")
    assert await run_json(jp_serverapp, second, CONNECT_FROM_KERNEL) in daemon.servers()


async def test_a_new_cap_while_kernels_run_reaches_clients_that_connect_afterwards(jp_fetch, jp_serverapp, fake_nvml):
    # Given a kernel connected under the admin's 8 GiB
    daemon = server_daemon(jp_serverapp)
    kernel_id = await capped_kernel(jp_fetch, limit=None)
    await run_json(jp_serverapp, kernel_id, CONNECT_FROM_KERNEL)
    first = await kernel_pid(jp_serverapp, kernel_id)
    uuid = fake_nvml.gpus[0].uuid
    # When the caps file lowers max_memory_mb to 4 GiB
    jp_serverapp.io_loop.asyncio_loop.call_soon(services(jp_serverapp).apply_caps, {"max_memory_mb": 4096})

    async def applied():
        facts = (await get(jp_fetch, "status"))["hard_caps"]["mechanism"]["facts"]
        return facts["default_limit_mb"] == 4096 and facts

    facts = await poll(applied, timeout=30)
    # Then the daemon's default is the new cap, GET status says how a change applies, and the
    # connected client keeps its limit
    assert daemon.state()["defaults"]["device_pinned_mem_limit"][uuid] == 4096
    assert "connect after the change" in facts["limit_changes"]
    assert daemon.clients()[first]["device_pinned_mem_limit"][uuid] == 8192
    # And a process the kernel starts now (`!python train.py`) gets the new cap
    child = await run_json(jp_serverapp, kernel_id, CONNECT_CHILD)
    assert daemon.clients()[child]["device_pinned_mem_limit"][uuid] == 4096


async def test_the_daemon_is_gone_with_the_server(jp_fetch, jp_serverapp):
    # Given the daemon with a server and a connected kernel
    kernel_id = await capped_kernel(jp_fetch)
    daemon = server_daemon(jp_serverapp)
    server = await run_json(jp_serverapp, kernel_id, CONNECT_FROM_KERNEL)
    pid, pipe = daemon.pid, daemon.pipe_dir
    runtime = services(jp_serverapp).hard_caps.runtime_dir
    # When the extension stops (as the server does)
    await jp_serverapp.web_app.settings["jupyter_tfgpu"].stop_extension()
    # Then the daemon, its server and both folders are gone
    assert not alive(pid) and not alive(server)
    assert not pipe.exists() and not runtime.exists()
    assert not [p for p in fake_mps_processes() if str(pipe) in Path(f"/proc/{p}/environ").read_text(errors="replace")]


@pytest.mark.parametrize("tfgpu_config", ["auto"], indirect=True)
async def test_auto_picks_mps_where_nvml_limits_are_missing(jp_fetch, jp_serverapp):
    status = (await get(jp_fetch, "status"))["hard_caps"]
    assert (status["asked"], status["in_force"]) == ("auto", "mps")
    assert status["reason"].startswith("nvml: ")
    assert server_daemon(jp_serverapp).running


@pytest.fixture
def no_daemon_binary(monkeypatch):
    """A PATH with no nvidia-cuda-mps-control on it."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "nvidia-cuda-mps-control").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))


@pytest.mark.parametrize("tfgpu_config", ["mps", "auto"], indirect=True)
async def test_without_the_daemon_binary_caps_stay_cooperative_saying_why(no_daemon_binary, jp_fetch, tfgpu_config):
    status = (await get(jp_fetch, "status"))["hard_caps"]
    assert status["in_force"] == "off"
    assert "nvidia-cuda-mps-control is not on the server's PATH" in status["reason"]
    problems = (await get(jp_fetch, "config"))["problems"]
    # Named explicitly, the missing daemon is a start-up problem (listed with on_config_error warn)
    assert any("nvidia-cuda-mps-control" in json.dumps(p) for p in problems) is (tfgpu_config["hard_caps"] == "mps")


@pytest.fixture
def platform_mps(monkeypatch):
    """An MPS daemon as the Kubernetes device plugin runs one, named by the server's environment."""
    root = Path(tempfile.mkdtemp(prefix="dp-"))
    pipe, log = root / "pipe", root / "log"
    pipe.mkdir()
    log.mkdir()
    control = MpsControl(str(CONTROL), str(pipe), str(log))
    control.start_daemon([])
    control.run("set_default_device_pinned_mem_limit 0 40960M", "set_default_active_thread_percentage 50")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe))
    yield FakeMpsDaemon(pipe)
    control.quit(0)
    shutil.rmtree(root, ignore_errors=True)


async def test_under_the_device_plugins_mps_no_daemon_is_started(platform_mps, jp_fetch, jp_serverapp, fake_nvml):
    # Given a server whose environment names the platform's MPS daemon
    mechanism = (await get(jp_fetch, "status"))["hard_caps"]["mechanism"]
    # Then it shows it, with the limits the platform set, and starts none of its own
    assert mechanism["state"] == "running"
    assert mechanism["facts"]["pipe_directory"] == str(platform_mps.pipe_dir)
    assert mechanism["facts"]["default_limits_by_index"].startswith("0=40G")
    assert mechanism["facts"]["default_thread_percentage"] == "50.0"
    assert not services(jp_serverapp).hard_caps.runtime_dir.exists()
    # And a kernel joins the platform's daemon, its own cap set through its variable only
    kernel_id = await capped_kernel(jp_fetch)
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(platform_mps.pipe_dir)
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{fake_nvml.gpus[0].uuid}=2048M"
    view = await get(jp_fetch, "kernels", kernel_id)
    assert view["enforcement"]["reason"] == mps.PLATFORM
    # And it is still there once the server stopped
    await jp_serverapp.web_app.settings["jupyter_tfgpu"].stop_extension()
    await asyncio.sleep(0)
    assert platform_mps.running

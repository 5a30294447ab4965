"""The MPS mechanism against the fake nvidia-cuda-mps-control: the server's own daemon started,
limited, watched, restarted, stopped with nothing left; each kernel's client variables; the
platform's daemon (Kubernetes) read and used, never started. Time is injected."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_tfgpu.policy.admin import AdminPolicy
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.server.hardcaps.host import ExternalMps, GpuFacts, HostFacts
from jupyter_tfgpu.server.hardcaps.mechanism import MechanismContext, MechanismError, StartingKernel
from jupyter_tfgpu.server.hardcaps.mps import (
    LIFTABLE,
    PLATFORM,
    PlatformMps,
    ServerMps,
    make_mps,
)
from jupyter_tfgpu.server.hardcaps.mps_control import MpsControl, limit_mib, read_back_matches
from tests.fake_mps import CONTROL, FakeMpsDaemon, alive, fake_mps_processes

UUIDS = ["GPU-11111111-0000-0000-0000-000000000000", "GPU-22222222-0000-0000-0000-000000000000"]
GPUS = tuple(GpuFacts(i, uuid, "NVIDIA A100", (8, 0), False, "default") for i, uuid in enumerate(UUIDS))
DEVICES = [DeviceInfo(index=i, uuid=uuid, name="NVIDIA A100", memory_total=80 * 2**30) for i, uuid in enumerate(UUIDS)]  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def short(tmp_path):
    """A folder with a short path (pytest's are too deep for a UNIX socket's in a pipe folder)."""
    folder = Path(tempfile.mkdtemp(prefix="mps-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def caps():
    """The admin's caps in force, changed by a test as a caps file would."""
    return {"admin": AdminPolicy(max_memory_mb=8192)}


@pytest.fixture
def reports():
    return []


@pytest.fixture
def clock():
    return Clock()


def context(short, caps, reports, clock, **host) -> MechanismContext:
    facts = HostFacts(checked_at=0.0, driver="550.54.15", gpus=GPUS, mps_control=str(CONTROL))
    return MechanismContext(
        host=dataclasses.replace(facts, **host),
        runtime_dir=short / "tfgpu-hardcaps-1",
        admin=lambda: caps["admin"],
        report=lambda kernel_id, enforcement: reports.append((kernel_id, enforcement)),
        clock=clock,
    )


@pytest.fixture
def mps(short, caps, reports, clock):
    """The server's MPS, started; stopped at the end (whatever the test left)."""
    mechanism = ServerMps(context(short, caps, reports, clock))
    mechanism.start()
    yield mechanism
    mechanism.stop()


def kernel(kernel_id="k1", limit=4096, devices=None, language="python") -> StartingKernel:
    policy = {"memory_limit_mb": limit, "devices": devices}
    launch = Launch.render(policy, DEVICES, kernel_id=kernel_id)
    return StartingKernel(kernel_id, launch, language, tuple(DEVICES))


def fake(mechanism: ServerMps) -> FakeMpsDaemon:
    return FakeMpsDaemon(mechanism.daemon.pipe_dir)


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, mib", [("4G", 4096), ("900M", 900), ("1024K", 1), ("2 GiB", 2048), ("No memory limit set", None), ("", None)]
)
def test_a_limit_as_printed_in_mib(text, mib):
    assert limit_mib(text) == mib


@pytest.mark.parametrize("asked, shown, ok", [(4096, "4G", True), (1536, "1G", True), (900, "900M", True), (900, "1G", False), (4096, "Invalid", False)])  # fmt: skip
def test_a_read_back_limit_is_the_one_set_or_it_in_whole_gib(asked, shown, ok):
    assert read_back_matches(asked, shown) is ok


# -- the server's daemon ------------------------------------------------------------------------


def test_the_daemon_starts_private_with_the_admins_cap_on_each_gpu(mps, short):
    # Given the server's MPS started under max_memory_mb 8192
    daemon = fake(mps)
    # Then its folders are in the server's runtime folder, this user's alone
    runtime = short / "tfgpu-hardcaps-1"
    assert mps.daemon.pipe_dir == runtime / "mps-pipe"
    for folder in (runtime / "mps-pipe", runtime / "mps-log"):
        assert folder.stat().st_mode & 0o777 == 0o700
    assert (runtime / "mps-log" / "control.log").exists()
    # And the daemon sees every GPU by UUID, each with the admin's cap as its default limit
    state = daemon.state()
    assert state["visible_devices"] == UUIDS
    assert state["defaults"]["device_pinned_mem_limit"] == {uuid: 8192 for uuid in UUIDS}
    # And GET status says so
    status = mps.status()
    assert status.state == "running"
    assert status.facts["pid"] == daemon.pid
    assert status.facts["default_limit_mb"] == 8192
    assert status.facts["default_limit_read_back"] == f"{UUIDS[0]}=8G, {UUIDS[1]}=8G"


def test_without_an_admin_cap_no_default_is_set(short, caps, reports, clock):
    caps["admin"] = AdminPolicy()
    mechanism = ServerMps(context(short, caps, reports, clock))
    mechanism.start()
    try:
        assert fake(mechanism).state()["defaults"]["device_pinned_mem_limit"] == {}
    finally:
        mechanism.stop()


def test_a_daemon_that_cannot_start_is_said_and_leaves_nothing(short, caps, reports, clock, monkeypatch):
    # Given a daemon that fails at -d
    monkeypatch.setenv("FAKE_MPS_START_FAIL", "cannot open /dev/nvidiactl")
    mechanism = ServerMps(context(short, caps, reports, clock))
    # When the mechanism starts / Then it fails, saying why, and leaves no folder
    with pytest.raises(MechanismError, match="cannot open /dev/nvidiactl"):
        mechanism.start()
    assert not (short / "tfgpu-hardcaps-1").exists()


def test_stop_leaves_nothing_behind(mps, short):
    # Given the daemon with a server and a client that went away
    daemon = fake(mps)
    client = sleeper()
    server = daemon.connect(client.pid)
    client.kill()
    client.wait()
    pid = daemon.pid
    # When it stops
    mps.stop()
    # Then the daemon and its server are gone, and so are the folders
    assert not alive(pid) and not alive(server)
    assert not short.joinpath("tfgpu-hardcaps-1").exists()
    assert not [p for p in fake_mps_processes() if str(short) in Path(f"/proc/{p}/environ").read_text(errors="replace")]
    assert mps.status().state == "stopped"


def test_stop_forces_servers_whose_clients_stay(mps, monkeypatch):
    # Given a client that never leaves (quit would wait for it for ever)
    monkeypatch.setattr("jupyter_tfgpu.server.hardcaps.mps_daemon.QUIT_SECONDS", 0.2)
    daemon = fake(mps)
    client = sleeper()
    server = daemon.connect(client.pid)
    try:
        # When it stops / Then the server is forced down, the daemon gone
        pid = daemon.pid
        mps.stop()
        assert not alive(pid) and not alive(server)
    finally:
        client.kill()
        client.wait()


def test_a_deep_runtime_folder_puts_the_pipe_folder_under_tmp(short, caps, reports, clock):
    # Given a runtime folder too deep for the daemon's socket paths
    deep = short / ("d" * 60) / ("e" * 60)
    mechanism = ServerMps(dataclasses.replace(context(short, caps, reports, clock), runtime_dir=deep))
    mechanism.start()
    pipe = mechanism.daemon.pipe_dir
    try:
        # Then the pipe folder is a private one under the temporary folder, said in GET status
        assert not str(pipe).startswith(str(short)) and pipe.stat().st_mode & 0o777 == 0o700
        assert mechanism.status().facts["pipe_directory_outside_runtime"] is True
        assert fake(mechanism).running
    finally:
        mechanism.stop()
    assert not pipe.exists() and not deep.exists()


# -- watched and restarted ----------------------------------------------------------------------


def test_a_daemon_that_died_is_restarted_with_its_limits_and_kernels_told(mps, reports, clock):
    # Given a kernel started under MPS, then the daemon killed
    mps.prepare(kernel())
    daemon = fake(mps)
    first = daemon.kill()
    # When the watcher looks (the first restart is at once)
    mps.daemon.check()
    # Then the kernel was told while the daemon was down what that means
    (kernel_id, said), (_, back) = reports
    assert kernel_id == "k1" and said.gpus[0].mechanism == "framework_settings"
    assert "MPS control daemon is down" in said.reason
    # And a new daemon runs, its defaults set again (they are lost with the daemon)
    assert daemon.running and daemon.pid != first
    assert daemon.state()["defaults"]["device_pinned_mem_limit"] == {uuid: 8192 for uuid in UUIDS}
    status = mps.status()
    assert status.state == "running" and status.facts["restarts"] == 1
    assert "is gone" in status.facts["last_error"]
    # And the kernel's MPS enforcement is back
    assert back.gpus[0].mechanism == "mps"


def test_a_daemon_that_keeps_dying_is_restarted_after_a_growing_back_off(mps, clock):
    daemon = fake(mps)
    # Given a daemon restarted once, that dies again at once
    daemon.kill()
    mps.daemon.check()
    daemon.kill()
    clock.now += 1
    mps.daemon.check()
    # Then it waits 5 s before the next start, said in GET status
    status = mps.status()
    assert status.state == "restarting" and "is gone" in status.detail
    assert status.facts["next_restart_in_s"] == 5.0
    clock.now += 4
    mps.daemon.check()
    assert not daemon.running
    clock.now += 1
    mps.daemon.check()
    assert daemon.running and mps.status().facts["restarts"] == 2


def test_a_daemon_that_stops_answering_is_replaced(mps):
    # Given a daemon that answers slower than the server waits
    mps.daemon.control = dataclasses.replace(mps.daemon.control, timeout=0.3)
    daemon = fake(mps)
    hung = daemon.pid
    daemon.slow(2)
    # When the watcher looks
    mps.daemon.check()
    # Then the hung daemon was killed and a new one runs (its pipe folder new: not slow)
    assert "did not answer" in mps.status().facts["last_error"]
    assert not alive(hung) and daemon.running and daemon.pid != hung


def test_a_restart_that_fails_is_tried_again_and_kernels_start_without_mps_meanwhile(mps, clock, monkeypatch):
    # Given a daemon that died and cannot start again for now
    monkeypatch.setenv("FAKE_MPS_START_FAIL", "no GPU answers")
    fake(mps).kill()
    mps.daemon.check()
    # Then GET status says it, with the next try
    status = mps.status()
    assert status.state == "restarting" and "no GPU answers" in status.detail
    assert status.facts["next_restart_in_s"] == 5.0
    # And a kernel starting now is refused by the mechanism (it starts with framework settings)
    with pytest.raises(MechanismError, match="not running"):
        mps.prepare(kernel())
    # When the start works again and the back-off is over / Then it runs
    monkeypatch.delenv("FAKE_MPS_START_FAIL")
    clock.now += 5
    mps.daemon.check()
    assert mps.status().state == "running" and mps.status().facts["restarts"] == 2


def test_a_new_admin_cap_is_set_for_new_servers_and_new_clients(mps, caps):
    # Given a running server (one client), then the caps file lowers max_memory_mb
    daemon = fake(mps)
    client = sleeper()
    try:
        daemon.connect(client.pid)
        caps["admin"] = AdminPolicy(max_memory_mb=2048)
        # When the watcher looks
        mps.daemon.check()
        # Then the default and the running server's limit are the new cap
        state = daemon.state()
        assert state["defaults"]["device_pinned_mem_limit"] == {uuid: 2048 for uuid in UUIDS}
        assert state["servers"][0]["device_pinned_mem_limit"] == {uuid: 2048 for uuid in UUIDS}
        # And the client already connected keeps its own, as NVIDIA documents
        assert daemon.clients()[client.pid]["device_pinned_mem_limit"] == {uuid: 8192 for uuid in UUIDS}
        assert "connect after the change" in mps.status().facts["limit_changes"]
    finally:
        client.kill()
        client.wait()


# -- per kernel ---------------------------------------------------------------------------------


def test_a_kernel_gets_its_cap_on_its_visible_gpus_only(mps):
    # Given a kernel capped at 4096 MiB on GPU 1
    prepared = mps.prepare(kernel(devices=[1]))
    # Then its variables name the daemon's pipe folder and GPU 1 alone, by UUID
    assert prepared.env["CUDA_MPS_PIPE_DIRECTORY"] == str(mps.daemon.pipe_dir)
    assert prepared.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{UUIDS[1]}=4096M"
    assert prepared.wrapper == ()
    # And its level is framework, mechanism mps, saying the kernel can lift it
    [gpu] = prepared.enforcement.gpus
    assert (gpu.gpu, gpu.level, gpu.mechanism, gpu.reason) == (UUIDS[1], "framework", "mps", LIFTABLE)


def test_a_kernel_on_every_gpu_gets_each(mps):
    prepared = mps.prepare(kernel(devices=None))
    assert prepared.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == ",".join(f"{u}=4096M" for u in UUIDS)
    assert [g.mechanism for g in prepared.enforcement.gpus] == ["mps", "mps"]


def test_the_limit_the_client_gets_is_the_lower_of_its_own_and_the_admins(mps):
    # Given a kernel capped at 4096 MiB on GPU 0 under the admin's 8192, as its first CUDA call
    # would connect with its environment
    env = {**mps.prepare(kernel(devices=[0])).env, "CUDA_VISIBLE_DEVICES": UUIDS[0]}
    daemon = fake(mps)
    daemon.connect(os.getpid(), env)
    # Then the daemon holds it at 4096 on GPU 0
    assert daemon.clients()[os.getpid()]["device_pinned_mem_limit"][UUIDS[0]] == 4096


def test_a_kernel_without_a_cap_joins_mps_without_a_limit_of_its_own(mps):
    prepared = mps.prepare(kernel(limit=None))
    # The variable is removed (an inherited one could name GPUs it cannot see)
    assert prepared.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] is None
    assert prepared.env["CUDA_MPS_PIPE_DIRECTORY"] == str(mps.daemon.pipe_dir)
    assert prepared.enforcement.level == "none"


def test_a_cpu_only_kernel_gets_no_limit(mps):
    prepared = mps.prepare(kernel(devices=[]))
    assert prepared.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] is None
    assert prepared.enforcement.gpus == ()


def test_a_non_python_kernel_is_held_by_mps_too(mps):
    """MPS reads the environment in any CUDA process, so it reaches a kernel the bootstrap does
    not."""
    prepared = mps.prepare(kernel(language="julia", devices=[0]))
    assert prepared.enforcement.gpus[0].mechanism == "mps"


def test_before_signal_terminates_the_kernels_clients_first(mps):
    # Given two processes of a kernel, one an MPS client, and a client of another kernel
    daemon = fake(mps)
    mine, other = sleeper(), sleeper()
    try:
        server = daemon.connect(mine.pid)
        daemon.connect(other.pid)
        # When the kernel's processes are about to be signalled
        mps.before_signal("k1", [mine.pid, 424242])
        # Then its client was terminated while alive, and the other kernel's was not
        assert daemon.state()["terminated"] == [{"server": server, "client": mine.pid, "alive": True}]
        assert set(daemon.clients()) == {other.pid}
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()


# -- the platform's daemon (Kubernetes device plugin) -------------------------------------------


@pytest.fixture
def platform(short):
    """A daemon as the device plugin runs it: its own folders, limits set by device index."""
    pipe, log = short / "mps" / "pipe", short / "mps" / "log"
    pipe.mkdir(parents=True)
    log.mkdir()
    control = MpsControl(str(CONTROL), str(pipe), str(log))
    control.start_daemon([])
    control.run(
        "set_default_device_pinned_mem_limit 0 20480M",
        "set_default_device_pinned_mem_limit 1 20480M",
        "set_default_active_thread_percentage 25",
    )
    yield FakeMpsDaemon(pipe)
    control.quit(0)


def test_the_platforms_daemon_is_read_and_used_never_started(platform, short, caps, reports, clock):
    # Given the server's environment naming the platform's daemon
    external = ExternalMps(str(platform.pipe_dir), "socket")
    ctx = context(short, caps, reports, clock, external_mps=external)
    mechanism = make_mps(ctx)
    assert isinstance(mechanism, PlatformMps)
    # When it starts / Then it reads the platform's limits and starts no daemon of its own
    mechanism.start()
    status = mechanism.status()
    assert status.facts["default_limits_by_index"] == "0=20G, 1=20G"
    assert status.facts["default_thread_percentage"] == "25.0"
    assert not ctx.runtime_dir.exists()
    # And a kernel gets the platform's pipe folder and its own lower cap
    prepared = mechanism.prepare(kernel(devices=[0]))
    assert prepared.env == {
        "CUDA_MPS_PIPE_DIRECTORY": str(platform.pipe_dir),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"{UUIDS[0]}=4096M",
    }
    assert prepared.enforcement.gpus[0].reason == PLATFORM
    # And stopping the server leaves the platform's daemon running
    mechanism.stop()
    assert platform.running


def test_the_platforms_limits_without_the_binary_are_said_unread(platform, short, caps, reports, clock):
    external = ExternalMps(str(platform.pipe_dir), "socket")
    mechanism = make_mps(context(short, caps, reports, clock, external_mps=external, mps_control=None))
    mechanism.start()
    assert "not on the server's PATH" in mechanism.status().facts["limits"]


def test_a_daemon_that_keeps_its_output_open_does_not_hold_the_start(tmp_path):
    """``-d`` returns once the daemon listens; a daemon that keeps the output it inherited open
    (as one that does not close its stdio could) must not make the start wait for it."""
    # Given a binary whose daemon keeps stdout and stderr open for a minute after -d returns
    binary = tmp_path / "nvidia-cuda-mps-control"
    pid_file = tmp_path / "daemon.pid"
    binary.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\necho started\nexit 0\n")
    binary.chmod(0o755)
    control = MpsControl(str(binary), str(tmp_path), str(tmp_path))
    try:
        # When the server starts it, allowing 5 s: it returns, without waiting for the daemon
        control.start_daemon([], timeout=5)
    finally:
        os.kill(int(pid_file.read_text()), 9)
    # And a -d that fails says what it printed
    binary.write_text("#!/bin/sh\necho 'no GPU found' >&2\nexit 3\n")
    with pytest.raises(MechanismError, match="-d exited with 3: no GPU found"):
        control.start_daemon([], timeout=5)


def test_a_fifo_in_place_of_the_daemons_pid_file_is_not_waited_on(tmp_path):
    """The pipe folder is in every kernel's environment: what is put at the pid file's place is
    read without waiting, and only a number there is a PID."""
    from jupyter_tfgpu.server.hardcaps.mps_control import PID_FILE

    control = MpsControl(str(CONTROL), str(tmp_path))
    os.mkfifo(tmp_path / PID_FILE)
    assert control.daemon_pid() is None
    (tmp_path / PID_FILE).unlink()
    (tmp_path / PID_FILE).write_text("4242\n")
    assert control.daemon_pid() == 4242

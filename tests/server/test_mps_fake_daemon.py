"""The fake nvidia-cuda-mps-control speaks the protocol NVIDIA documents (the tests of the MPS
mechanism rest on it): -d returns once it listens, commands on stdin, answers on stdout, a
rejected command exits 0, no daemon exits non-zero, quit [-t N], state lost on quit."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.fake_mps import CONTROL, FakeMpsDaemon, alive, fake_mps_processes


@pytest.fixture
def folders(tmp_path):
    pipe, log = tmp_path / "pipe", tmp_path / "log"
    pipe.mkdir()
    log.mkdir()
    return pipe, log


@pytest.fixture
def daemon(folders):
    """A started fake daemon; quit (forced) at the end of the test."""
    pipe, log = folders
    started = start(pipe, log)
    assert started.returncode == 0, started
    fake = FakeMpsDaemon(pipe)
    yield fake
    if fake.running:
        fake.control("quit -t 0\n")
    for pid in fake_mps_processes():
        if str(pipe) in open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"):
            os.kill(pid, 9)


def start(pipe, log, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}
    return subprocess.run(
        [str(CONTROL), "-d"], env={**full, **env}, capture_output=True, text=True, timeout=30
    )


def test_d_returns_once_the_daemon_listens(daemon, folders):
    # Given a daemon started with -d / Then its pid file, control socket and log are there
    pipe, log = folders
    assert (pipe / "control").is_socket()
    assert daemon.running
    assert "Starting control daemon" in (log / "control.log").read_text()
    # And it answers at once, with the default thread percentage
    answer = daemon.control("get_default_active_thread_percentage\n")
    assert (answer.returncode, answer.stdout) == (0, "100.0\n")


def test_a_second_daemon_on_the_same_folder_is_refused(daemon, folders):
    assert start(*folders).returncode != 0


def test_start_failure_hook(folders):
    failed = start(*folders, FAKE_MPS_START_FAIL="cannot open the log")
    assert failed.returncode == 1 and "cannot open the log" in failed.stderr


def test_a_rejected_command_exits_0_with_an_error_on_stdout(daemon):
    answer = daemon.control("set_default_device_pinned_mem_limit GPU-x 12X\nno_such_command\n")
    assert answer.returncode == 0
    assert "Invalid memory limit" in answer.stdout and "Invalid command" in answer.stdout


def test_no_daemon_exits_non_zero(folders):
    answer = FakeMpsDaemon(folders[0]).control("get_server_list\n")
    assert answer.returncode != 0


@pytest.mark.parametrize("value, shown", [("4096M", "4G"), ("1536M", "1G"), ("900M", "900M"), ("2G", "2G")])
def test_default_pinned_limits_read_back(daemon, value, shown):
    # Given a default limit set for a GPU by UUID / When read back / Then as the getters print it
    answer = daemon.control(
        f"set_default_device_pinned_mem_limit GPU-a {value}\nget_default_device_pinned_mem_limit GPU-a\n"
    )
    assert (answer.returncode, answer.stdout) == (0, f"{shown}\n")


def test_clients_servers_and_terminate_client(daemon):
    # Given this test process as a client, with its own lower limit
    daemon.control("set_default_device_pinned_mem_limit GPU-a 4G\n")
    env = {"CUDA_VISIBLE_DEVICES": "GPU-a", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "GPU-a=1024M"}
    server = daemon.connect(os.getpid(), env)
    # Then the server runs, lists the client, which got the lower of the two limits
    assert alive(server)
    assert daemon.control("get_server_list\n").stdout == f"{server}\n"
    assert daemon.control(f"get_client_list {server}\n").stdout == f"{os.getpid()}\n"
    assert daemon.clients()[os.getpid()]["device_pinned_mem_limit"] == {"GPU-a": 1024}
    # When it is terminated / Then "0", and it is no longer a client
    assert daemon.control(f"terminate_client {server} {os.getpid()}\n").stdout == "0\n"
    assert daemon.control(f"get_client_list {server}\n").stdout == ""
    assert daemon.state()["terminated"] == [{"server": server, "client": os.getpid(), "alive": True}]


def test_a_client_naming_a_gpu_it_cannot_see_drops_every_limit(daemon):
    """NVIDIA's Dynamo guide, measured on 615.71.09: the escape the mechanism must not open."""
    daemon.control("set_default_device_pinned_mem_limit GPU-a 4G\n")
    env = {"CUDA_VISIBLE_DEVICES": "GPU-a", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "GPU-a=1G,GPU-b=1G"}
    daemon.connect(os.getpid(), env)
    assert daemon.clients()[os.getpid()]["device_pinned_mem_limit"] == {}


def test_defaults_apply_to_the_next_server_and_are_lost_on_quit(daemon, folders):
    # Given a server started under a 4G default, then a new default of 2G
    daemon.control("set_default_device_pinned_mem_limit GPU-a 4G\n")
    sleeper = subprocess.Popen(["sleep", "60"])
    daemon.connect(sleeper.pid)
    daemon.control("set_default_device_pinned_mem_limit GPU-a 2G\n")
    # Then the running server keeps the limit it started with
    [server] = daemon.state()["servers"]
    assert server["device_pinned_mem_limit"] == {"GPU-a": 4096}
    # When the daemon quits (the client still there: forced after 0 s) and starts again
    assert daemon.control("quit -t 0\n").returncode == 1
    assert not alive(server["pid"])
    sleeper.kill()
    sleeper.wait()
    assert start(*folders).returncode == 0
    # Then the default is gone
    answer = daemon.control("get_default_device_pinned_mem_limit GPU-a\n")
    assert answer.stdout == "No memory limit set\n"


def test_quit_waits_for_clients_and_exits_0_when_they_leave(daemon):
    sleeper = subprocess.Popen(["sleep", "60"])
    daemon.connect(sleeper.pid)
    quitting = subprocess.Popen(
        [str(CONTROL)], stdin=subprocess.PIPE, text=True,
        env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe_dir)},
    )  # fmt: skip
    quitting.stdin.write("quit\n")
    quitting.stdin.close()
    time.sleep(0.3)
    assert quitting.poll() is None  # still waiting for the client
    sleeper.kill()
    sleeper.wait()
    assert quitting.wait(timeout=20) == 0
    assert not daemon.running


def test_a_killed_daemon_leaves_its_files_and_answers_nothing(daemon, folders):
    # Given a daemon with a server
    server = daemon.connect(os.getpid())
    # When it is killed
    daemon.kill()
    # Then its files stay, the front end fails, and its server goes with it
    pipe, _ = folders
    assert (pipe / "control").exists() and (pipe / "nvidia-cuda-mps-control.pid").exists()
    assert daemon.control("get_server_list\n").returncode != 0
    deadline = time.monotonic() + 10
    while alive(server):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # And -d starts a new one in the same folder
    assert start(*folders).returncode == 0


def test_the_slow_hook_delays_answers(daemon):
    daemon.slow(0.5)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [str(CONTROL)], input="get_server_list\n", timeout=0.2, capture_output=True, text=True,
            env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe_dir)},
        )  # fmt: skip
    daemon.slow(0)

"""Processes under NVIDIA MPS: NVML's compute list names the MPS server, its MPS list the clients.

The backend reads the MPS list (``nvmlDeviceGetMPSComputeRunningProcesses``) on a GPU whose
compute list holds an MPS server, marks the server as what it is, and gives each client its own
row, so a kernel's clients are attributed to it like any process of its tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pynvml
import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.gpu.readings import ProcessReading
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

GIB = 2**30
MPS_LISTS = {
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v2",
}


@pytest.fixture
def install(monkeypatch):
    def _install(**kwargs) -> FakeNvml:
        fake = FakeNvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        return fake

    return _install


@pytest.fixture
def mps_server(tmp_path):
    """A live process named as NVIDIA's MPS server is (nvidia-cuda-mps-server)."""
    script = tmp_path / "nvidia-cuda-mps-server"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)])
    deadline = time.monotonic() + 10
    while not open(f"/proc/{proc.pid}/comm").read().startswith("nvidia-cuda-mps"):
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


# -- the fake's binding -------------------------------------------------------------------------


def test_the_fake_lists_mps_clients_as_the_binding_does(install):
    # Given a GPU with two MPS clients, one without a memory figure
    gpu = FakeGpu(mps_processes=[FakeProcess(pid=21, used_memory=GIB), FakeProcess(pid=22, used_memory=None)])
    fake = install(gpus=[gpu])
    nvml = fake.module
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    # When the MPS list is read, by each name the binding has
    lists = [
        getattr(nvml, name)(handle)
        for name in (
            "nvmlDeviceGetMPSComputeRunningProcesses",
            "nvmlDeviceGetMPSComputeRunningProcesses_v3",
            "nvmlDeviceGetMPSComputeRunningProcesses_v2",
        )
    ]
    # Then each gives the binding's objects: pid, usedGpuMemory (None when not available), ids
    for procs in lists:
        assert [(p.pid, p.usedGpuMemory) for p in procs] == [(21, GIB), (22, None)]
        assert {"gpuInstanceId", "computeInstanceId"} <= set(vars(procs[0]))
    # And the compute list does not name them (it names the MPS server under MPS)
    assert nvml.nvmlDeviceGetComputeRunningProcesses(handle) == []


def test_the_fake_has_no_mps_list_on_a_driver_without_it(install):
    # Given a driver without the symbols
    fake = install(missing_symbols=MPS_LISTS)
    nvml = fake.module
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    # When the plain name is called / Then FunctionNotFound, as the binding raises it
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetMPSComputeRunningProcesses(handle)


# -- the backend --------------------------------------------------------------------------------


def test_the_mps_server_is_marked_and_its_clients_get_rows(install, mps_server):
    # Given a GPU under MPS: its compute list names the server, its MPS list two clients
    clients = [FakeProcess(pid=os.getpid(), used_memory=3 * GIB), FakeProcess(pid=4242, used_memory=GIB)]
    gpu = FakeGpu(processes=[FakeProcess(pid=mps_server, used_memory=4 * GIB)], mps_processes=clients)
    install(gpus=[gpu])
    backend = NvmlBackend()
    backend.open()
    # When the processes are read
    rows = {p.pid: p for p in backend.read_processes(0)}
    # Then the server is marked as the MPS server, each client is a compute row of its own
    assert rows[mps_server].mps == "server"
    assert rows[mps_server].used_memory == 4 * GIB
    assert rows[os.getpid()] == ProcessReading(os.getpid(), 3 * GIB, "compute", mps="client")
    assert rows[4242].mps == "client"
    assert rows[4242].used_memory == GIB


def test_without_an_mps_server_the_mps_list_is_not_read(install):
    # Given a GPU whose compute list names an ordinary process (this test's own)
    fake = install(gpus=[FakeGpu(processes=[FakeProcess(pid=os.getpid(), used_memory=GIB)])])
    backend = NvmlBackend()
    backend.open()
    # When the processes are read twice
    backend.read_processes(0)
    rows = backend.read_processes(0)
    # Then the MPS list was never asked, and the row is as before MPS existed
    assert not any("MPS" in name for name in fake.calls)
    assert rows == (ProcessReading(os.getpid(), GIB, "compute"),)
    assert "mps" not in rows[0].to_json()


def test_an_mps_server_on_a_driver_without_the_mps_list_is_still_marked(install, mps_server):
    # Given an MPS server, and a binding whose driver lacks the MPS list
    gpu = FakeGpu(processes=[FakeProcess(pid=mps_server, used_memory=GIB)])
    install(gpus=[gpu], missing_symbols=MPS_LISTS)
    backend = NvmlBackend()
    backend.open()
    # When the processes are read / Then no error: the server is marked, no client is known
    rows = backend.read_processes(0)
    assert [(p.pid, p.mps) for p in rows] == [(mps_server, "server")]


def test_a_client_row_round_trips_through_json():
    row = ProcessReading(7, GIB, "compute", mps="client").owned_by("k1", "nb.ipynb", "pid")
    assert row.mps == "client"
    assert ProcessReading.from_json(row.to_json()) == row
    assert row.to_json()["mps"] == "client"


@pytest.mark.parametrize("listed_twice", [True, False])
def test_a_pid_in_both_lists_is_one_client_row(install, mps_server, listed_twice):
    # Given a client NVML lists in the MPS list (and, on some drivers, in the compute list too)
    me = FakeProcess(pid=os.getpid(), used_memory=GIB)
    processes = [FakeProcess(pid=mps_server, used_memory=2 * GIB)] + ([me] if listed_twice else [])
    install(gpus=[FakeGpu(processes=processes, mps_processes=[me])])
    backend = NvmlBackend()
    backend.open()
    # When read / Then one row for it, a client, its memory counted once
    rows = [p for p in backend.read_processes(0) if p.pid == os.getpid()]
    assert [(p.mps, p.used_memory) for p in rows] == [("client", GIB)]


def test_the_stand_in_server_is_named_as_the_real_one(mps_server):
    """What the backend reads to know the server: the name the kernel gives its process."""
    comm = open(f"/proc/{mps_server}/comm").read().strip()
    assert comm == "nvidia-cuda-mps-server"[:15]  # Linux keeps 15 characters of a name

"""What the machine offers each hard-caps mode, found at start, and each lack said in words.

The GPUs come from the fake NVML, the cgroup hierarchy from a temporary tree, PATH and the uid
from the probe: nothing of this machine is read.
"""

from __future__ import annotations

import os
import socket
import stat

from jupyter_tfgpu.server.hardcaps.host import ExternalMps, detect
from jupyter_tfgpu.server.hardcaps.modes import mps_missing, nvml_missing
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.server.hardcaps_helpers import cgroup_tree, probe


def mps_binary(tmp_path):
    """An executable nvidia-cuda-mps-control on the probe's PATH."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    binary = folder / "nvidia-cuda-mps-control"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_a_machine_with_everything_lacks_nothing_for_either_mode(tmp_path):
    """Volta+ GPUs without MIG, the MPS binary, driver R615, cgroup v2 with dmem, root."""
    # Given such a machine
    nvml = FakeNvml([FakeGpu(), FakeGpu(name="NVIDIA H100", compute_capability=(9, 0))],
                    driver_version="615.71.09", privileged=True)  # fmt: skip
    binary = mps_binary(tmp_path)
    proc = cgroup_tree(tmp_path / "cgroup")
    # When it is looked at
    host = detect(probe(tmp_path, nvml.module, euid=lambda: 0, cgroup_root=tmp_path / "cgroup",
                        proc_self_cgroup=proc))  # fmt: skip
    # Then every fact is there, and neither mode lacks anything
    assert host.driver == "615.71.09" and host.mps_control == str(binary)
    assert [(g.index, g.compute_capability, g.mig, g.compute_mode) for g in host.gpus] == [
        (0, (8, 0), False, "default"), (1, (9, 0), False, "default"),
    ]  # fmt: skip
    assert (host.cgroup.v2, host.cgroup.own, host.cgroup.dmem) == (True, "/user.slice/jupyter", True)
    assert (host.memory_limits.bindings, host.memory_limits.driver) == (True, True)
    assert mps_missing(host) == [] and nvml_missing(host) == []
    assert host.to_json()["gpus"][1]["compute_capability"] == "9.0"
    assert not nvml.initialized  # NVML was shut down again


def test_a_plain_machine_says_each_lack_in_words(tmp_path):
    """No MPS binary, an old driver, cgroup v1, not root, a pre-Volta GPU and one in MIG mode."""
    # Given such a machine
    nvml = FakeNvml(
        [FakeGpu(name="Tesla P100", compute_capability=(6, 0)), FakeGpu(mig_enabled=True)],
        driver_version="550.54.15",
    )
    # When it is looked at
    host = detect(probe(tmp_path, nvml.module))
    # Then each mode says what it lacks, one sentence each
    lacks = mps_missing(host)
    assert lacks[0].startswith("nvidia-cuda-mps-control is not on the server's PATH")
    assert any("GPU 0 (Tesla P100) is older than Volta (compute capability 6.0)" in s for s in lacks)
    assert any("GPU 1" in s and "MIG" in s for s in lacks)
    nvml_lacks = " | ".join(nvml_missing(host))
    assert "driver 550.54.15 is older than R615" in nvml_lacks
    assert "no cgroup v2 hierarchy" in nvml_lacks
    assert "does not run as root (uid 1000)" in nvml_lacks
    assert "GPU 1 (NVIDIA A100-SXM4-80GB) has MIG enabled" in nvml_lacks


def test_a_driver_without_the_memory_limit_calls_is_said(tmp_path):
    """Bindings that have the call, a driver that does not (FunctionNotFound)."""
    nvml = FakeNvml([FakeGpu()], driver_version="615.71.09")
    nvml.missing_symbols.add("nvmlDeviceGetMemoryLimits_v1")
    host = detect(probe(tmp_path, nvml.module))
    assert (host.memory_limits.bindings, host.memory_limits.driver) == (True, False)
    assert any("has no nvmlDeviceGetMemoryLimits_v1" in s for s in nvml_missing(host))


def test_bindings_without_the_memory_limit_calls_are_said(tmp_path):
    """nvidia-ml-py older than 13.615.71."""
    nvml = FakeNvml([FakeGpu()], driver_version="615.71.09")
    del nvml.module.nvmlDeviceSetMemoryLimits_v1
    host = detect(probe(tmp_path, nvml.module))
    assert host.memory_limits.bindings is False
    assert any("13.615.71 or newer" in s for s in nvml_missing(host))


def test_cgroup_v2_without_dmem_is_said(tmp_path):
    nvml = FakeNvml([FakeGpu()], driver_version="615.71.09", privileged=True)
    proc = cgroup_tree(tmp_path / "cgroup", controllers="cpu memory")
    host = detect(probe(tmp_path, nvml.module, euid=lambda: 0, cgroup_root=tmp_path / "cgroup",
                        proc_self_cgroup=proc))  # fmt: skip
    assert nvml_missing(host) == [
        "the dmem controller is not available to the server's cgroup (/user.slice/jupyter); "
        "Linux has it from 6.14"
    ]


def test_without_nvml_every_mode_lacks_the_gpus(tmp_path):
    """No library: said once, for both modes; nothing raised."""
    host = detect(probe(tmp_path))
    assert host.gpus == () and "NVML could not be opened: no pynvml here" in host.nvml_error
    assert any("the GPUs could not be read" in s for s in mps_missing(host))
    assert any("the GPUs could not be read" in s for s in nvml_missing(host))


def test_a_gpu_in_compute_mode_prohibited_cannot_run_mps(tmp_path):
    mps_binary(tmp_path)
    nvml = FakeNvml([FakeGpu(compute_mode=2)])
    host = detect(probe(tmp_path, nvml.module))
    assert mps_missing(host) == ["GPU 0 (NVIDIA A100-SXM4-80GB) is in compute mode Prohibited"]


def test_the_device_plugins_mps_daemon_is_found_through_the_servers_environment(tmp_path):
    """CUDA_MPS_PIPE_DIRECTORY with a control socket (the Kubernetes device plugin's MPS
    sharing): MPS needs nothing more, not even the binary on PATH."""
    # Given a pipe folder with a control socket, named in the server's environment
    pipe = tmp_path / "mps-pipe"
    pipe.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    try:
        os.chdir(pipe)  # a short path for the socket
        listener.bind("control")
    finally:
        os.chdir(here)
    environ = {"PATH": str(tmp_path / "bin"), "CUDA_MPS_PIPE_DIRECTORY": str(pipe)}
    # When the machine is looked at
    host = detect(probe(tmp_path, FakeNvml([FakeGpu()]).module, environ=environ))
    listener.close()
    # Then the daemon is found, and MPS lacks nothing
    assert host.external_mps == ExternalMps(str(pipe), "socket")
    assert mps_missing(host) == []
    # And a pipe folder with nothing in it is said as it is
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = detect(probe(tmp_path, environ={"CUDA_MPS_PIPE_DIRECTORY": str(empty)}))
    assert bare.external_mps == ExternalMps(str(empty), None)

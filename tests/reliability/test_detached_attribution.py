"""Processes a notebook detaches (setsid, a double fork) are still its own.

Such a process has left the kernel's process tree (its parent is PID 1 or a subreaper), so
walking parents does not find the kernel. A double fork keeps the kernel's session; setsid does
not, but the process still has the kernel id the provisioner put in the kernel's environment.
Unit tests use real processes and no server; the end-to-end test uses a real server and kernel
with the fake NVML listing the detached processes' PIDs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from jupyter_tfgpu.server.kernels import attribution as attribution_module
from jupyter_tfgpu.protocol import KERNEL_ID_ENV
from jupyter_tfgpu.server.kernels.attribution import Attribution, KernelProcess
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess
from tests.kernel_helpers import poll, run_json, start_session

GIB = 2**30
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def start(env: dict[str, str] | None = None) -> subprocess.Popen:
    """A sleeping process in a session of its own (as the kernel manager starts kernels)."""
    return subprocess.Popen(SLEEPER, env=env, start_new_session=True)


@pytest.fixture
def processes():
    """Processes a test starts; killed afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def as_kernel(proc: subprocess.Popen, kernel_id: str) -> KernelProcess:
    """A kernel record for a running process."""
    return KernelProcess(kernel_id, proc.pid, psutil.Process(proc.pid).create_time())


def start_later_than(proc: subprocess.Popen) -> subprocess.Popen:
    """A sleeper whose start time is clearly after ``proc``'s (create_time has 10 ms steps)."""
    began = psutil.Process(proc.pid).create_time()
    while True:
        later = start()
        if psutil.Process(later.pid).create_time() > began + 0.015:
            return later
        later.kill()
        later.wait()


def test_a_setsid_process_is_found_by_the_kernel_id_it_inherited(processes):
    """Outside every tree and session, a process carrying a live kernel's id is that kernel's."""
    # Given a kernel, then a process in its own session carrying the kernel's id
    kernel = start()
    processes.append(kernel)
    detached = start({**os.environ, KERNEL_ID_ENV: "k1"})
    processes.append(detached)
    attribution = Attribution()
    attribution.set_kernels([as_kernel(kernel, "k1")])
    # When attribution is asked about it
    owner = attribution.owners([detached.pid])[detached.pid]
    # Then it belongs to that kernel
    assert owner is not None and owner.kernel_id == "k1"


def test_a_kernel_id_is_not_taken_from_a_process_older_than_the_kernel(processes):
    """A process started before the kernel cannot be the kernel's, whatever its environment."""
    # Given a process carrying the id, started before the kernel
    older = start({**os.environ, KERNEL_ID_ENV: "k1"})
    processes.append(older)
    kernel = start_later_than(older)
    processes.append(kernel)
    attribution = Attribution()
    attribution.set_kernels([as_kernel(kernel, "k1")])
    # When attribution is asked about it
    # Then it belongs to no kernel
    assert attribution.owners([older.pid])[older.pid] is None


def test_a_kernel_id_is_not_taken_from_another_users_process(processes):
    """Only processes of the server's own user may claim a kernel by their environment."""
    # Given a server running as another user than the process that carries the id
    kernel = start()
    processes.append(kernel)
    detached = start({**os.environ, KERNEL_ID_ENV: "k1"})
    processes.append(detached)
    attribution = Attribution(uid=os.getuid() + 1)
    attribution.set_kernels([as_kernel(kernel, "k1")])
    # When attribution is asked about it
    # Then it belongs to no kernel
    assert attribution.owners([detached.pid])[detached.pid] is None


def test_an_unknown_kernel_id_is_no_kernels(processes):
    """A kernel id that is not one of this server's live kernels attributes nothing."""
    kernel = start()
    processes.append(kernel)
    stranger = start({**os.environ, KERNEL_ID_ENV: "someone-else"})
    processes.append(stranger)
    attribution = Attribution()
    attribution.set_kernels([as_kernel(kernel, "k1")])
    assert attribution.owners([stranger.pid])[stranger.pid] is None


def test_a_process_environment_is_read_once(processes, monkeypatch):
    """Samples after the first reuse what a process's environment said, even as kernels change."""
    # Given a detached process, and attribution counting its reads of environments
    kernel = start()
    processes.append(kernel)
    detached = start({**os.environ, KERNEL_ID_ENV: "k1"})
    processes.append(detached)
    reads: list[int] = []
    real_read = attribution_module.read_claim

    def counting_read(pid):
        reads.append(pid)
        return real_read(pid)

    monkeypatch.setattr(attribution_module, "read_claim", counting_read)
    attribution = Attribution()
    # When it is sampled three times, the set of kernels changing in between
    attribution.set_kernels([as_kernel(kernel, "k1")])
    first = attribution.owners([detached.pid])[detached.pid]
    attribution.set_kernels([as_kernel(kernel, "k1"), KernelProcess("gone", 1, 0.0)])
    second = attribution.owners([detached.pid])[detached.pid]
    third = attribution.owners([detached.pid])[detached.pid]
    # Then its environment was read once, and the answer stayed the same
    assert reads == [detached.pid]
    assert first.kernel_id == second.kernel_id == third.kernel_id == "k1"


# -- real server, real kernel, fake NVML -----------------------------------------------------------

# The kernel detaches two sleepers through a short-lived middle process, so both are orphans:
# one in a new session (setsid), one in the kernel's session with an empty environment.
DETACH = f"""
import json, os, subprocess, sys
SLEEPER = {SLEEPER!r}
def orphan(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)
# the sleeper must not hold the middle process's output pipes open
popen = "import subprocess as s; print(s.Popen(%r, stdout=s.DEVNULL, stderr=s.DEVNULL, %s).pid)"
setsid = orphan(popen % (SLEEPER, "start_new_session=True"))
bare = orphan(popen % (SLEEPER, "env={{}}"))
print(json.dumps({{"setsid": setsid, "bare": bare}}))
"""


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """Two GPUs, no processes yet."""
    return FakeNvml(gpus=[FakeGpu(memory_used=GIB), FakeGpu(memory_used=GIB)])


@pytest.fixture
def tfgpu_config():
    """NVML over the fake; process lists read every 0.2 s."""
    return {"backend": "nvml", "sample_interval": 0.1, "process_interval": 0.2}


async def gpu_rows(jp_fetch, pids: set[int]) -> list[dict] | None:
    """GET gpus rows of ``pids``, once every one of them is attributed."""
    data = json.loads((await jp_fetch("tfgpu", "api", "gpus")).body)
    rows = [p for g in data["gpus"] for p in g["processes"] if p["pid"] in pids]
    return rows if len(rows) == len(pids) and all(r["kernel_id"] for r in rows) else None


async def test_detached_processes_are_counted_against_their_notebook(
    jp_fetch, jp_serverapp, fake_nvml
):
    """A setsid child and a double-forked child of a kernel hold GPU memory: both are its own."""
    # Given a notebook's kernel that detached two processes from its tree
    session = await start_session(jp_fetch, "detach.ipynb")
    kernel_id = session["kernel"]["id"]
    kernel_pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    pids = await run_json(jp_serverapp, kernel_id, DETACH)
    setsid, bare = pids["setsid"], pids["bare"]
    try:
        tree = {p.pid for p in psutil.Process(kernel_pid).children(recursive=True)}
        assert setsid not in tree and bare not in tree
        assert os.getsid(setsid) != kernel_pid and os.getsid(bare) == kernel_pid
        # When NVML lists them on GPU 1 with 2 and 3 GiB
        fake_nvml.gpus[1].processes += [
            FakeProcess(pid=setsid, used_memory=2 * GIB),
            FakeProcess(pid=bare, used_memory=3 * GIB),
        ]
        rows = await poll(lambda: gpu_rows(jp_fetch, {setsid, bare}), timeout=20)
        view = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
    finally:
        for pid in (setsid, bare):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    # Then GET gpus gives both to the kernel and its notebook
    assert {(r["kernel_id"], r["notebook"], r["attributed_by"]) for r in rows} == {
        (kernel_id, "detach.ipynb", "pid")
    }
    # And GET kernels/{id} counts their memory, which is what the cap is checked against
    assert view["gpu_memory"]["total"] == 5 * GIB
    assert view["gpu_memory"]["per_gpu"][0]["pids"] == sorted([setsid, bare])

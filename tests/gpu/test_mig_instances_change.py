"""MIG instances made or destroyed while the server runs are seen: when a process names an
instance not known (at once), and on a slow cadence (instances without processes)."""

from __future__ import annotations

import sys

import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.gpu.nvml_facts import MIG_REFRESH_SECONDS
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.fake_pynvml import FakeGpu, FakeMig, FakeNvml, FakeProcess

GIB = 2**30
ENUMERATE = "nvmlDeviceGetMigDeviceHandleByIndex"


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    """One MIG GPU with one instance (GPU instance 1) and a process in it; slots 1-6 free."""
    gpu = FakeGpu(
        mig_enabled=True,
        mig_devices=[FakeMig(memory_total=10 * GIB, memory_used=GIB, gpu_instance_id=1)],
        processes=[FakeProcess(101, GIB, gpu_instance_id=1, compute_instance_id=0)],
    )
    fake = FakeNvml(gpus=[gpu])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def new_slice(fake: FakeNvml, pid: int | None = 202) -> FakeMig:
    """Make a 2g.20gb instance (GPU instance 5) in slot 3, with a 5 GiB process unless None."""
    mig = fake.create_mig(
        0, 3, FakeMig(memory_total=20 * GIB, memory_used=5 * GIB, gpu_instance_id=5, profile="2g.20gb")
    )
    if pid is not None:
        fake.gpus[0].processes.append(FakeProcess(pid, 5 * GIB, gpu_instance_id=5, compute_instance_id=0))
    return mig


def test_a_process_on_an_instance_made_after_open_is_placed_on_it(fake):
    """The parent's list names ids not known: the instances are enumerated again, and mapped."""
    # Given a backend that has read the processes once (from the parent's list)
    backend = NvmlBackend(clock=FakeClock())
    before = backend.open()[0]
    backend.read_processes(0)

    # When a new instance is made and a 5 GiB process starts in it
    mig = new_slice(fake)
    rows = {p.pid: p for p in backend.read_processes(0)}

    # Then the process is there, on the new slot; the GPU's facts list the new instance
    assert rows[202].used_memory == 5 * GIB and rows[202].mig == 3
    assert rows[101].mig == 0
    after = backend.device_info(0)
    assert [i.index for i in before.mig_instances] == [0]
    assert [(i.index, i.uuid) for i in after.mig_instances] == [(0, fake.gpus[0].mig_devices[0].uuid), (3, mig.uuid)]
    # And the fast reading has the new instance's memory
    assert backend.read_fast(0).mig_memory[3].used == 5 * GIB
    # And the parent's list is still the one read (no flip to one list per instance)
    fake.reset_counters()
    backend.read_processes(0)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


def test_ids_no_enumeration_finds_keep_the_process_and_are_not_looked_for_each_round(fake):
    """A process naming an instance NVML does not enumerate stays on the GPU (mig null)."""
    # Given a process whose record names GPU instance 9, which has no MIG device handle
    fake.gpus[0].processes.append(FakeProcess(303, 2 * GIB, gpu_instance_id=9, compute_instance_id=0))
    clock = FakeClock()
    backend = NvmlBackend(clock=clock)
    backend.open()

    # When the processes are read three times
    first = {p.pid: p for p in backend.read_processes(0)}
    fake.reset_counters()
    backend.read_processes(0)
    backend.read_processes(0)
    enumerations = fake.calls[ENUMERATE]

    # Then the process is listed, without a slot; one enumeration looked for it, not each round
    assert first[303].mig is None and first[303].used_memory == 2 * GIB
    assert first[101].mig == 0
    assert enumerations == 0
    # And once the slow cadence is due, it is looked for again
    clock.now += MIG_REFRESH_SECONDS
    backend.read_processes(0)
    assert fake.calls[ENUMERATE] > 0


def test_instances_made_or_destroyed_without_processes_are_seen_on_the_slow_cadence(fake):
    """An instance made with no process on it shows after MIG_REFRESH_SECONDS; so does one gone."""
    # Given an open backend
    clock = FakeClock()
    backend = NvmlBackend(clock=clock)
    backend.open()

    # When an instance is made (no process), and the processes are read before and after the cadence
    new_slice(fake, pid=None)
    backend.read_processes(0)
    early = [i.index for i in backend.device_info(0).mig_instances]
    clock.now += MIG_REFRESH_SECONDS
    backend.read_processes(0)
    later = [i.index for i in backend.device_info(0).mig_instances]
    # And when the first instance is destroyed
    fake.gpus[0].mig_devices[0] = None
    fake.gpus[0].processes = []
    clock.now += MIG_REFRESH_SECONDS
    backend.read_processes(0)
    gone = [i.index for i in backend.device_info(0).mig_instances]

    # Then
    assert early == [0] and later == [0, 3] and gone == [3]


def test_an_unprivileged_reader_finds_the_new_instance_and_its_process(fake):
    """Reading one list per instance (parent refused): the new instance's process shows once
    the instances are enumerated again."""
    # Given a parent whose process lists need privileges
    fake.gpus[0].mig_parent_lists_privileged = True
    clock = FakeClock()
    backend = NvmlBackend(clock=clock)
    backend.open()
    backend.read_processes(0)

    # When a slice with a process is made and the slow cadence comes
    new_slice(fake)
    clock.now += MIG_REFRESH_SECONDS
    rows = {p.pid: p.mig for p in backend.read_processes(0)}

    # Then
    assert rows == {101: 0, 202: 3}


def test_the_sampler_publishes_the_new_instance(fake):
    """The snapshot and the sampler's devices follow the new instance (policies can name it)."""
    # Given a sampler that has sampled once
    sampler = Sampler(
        NvmlBackend(clock=FakeClock()), interval=1.0, process_interval=1.0, budget=1.0
    )
    sampler.open()
    sampler._sample_round(100.0)

    # When a slice with a 5 GiB process is made, and two rounds run
    mig = new_slice(fake)
    sampler._sample_round(101.0)
    sampler._sample_round(102.0)
    row = sampler.latest.to_json()["gpus"][0]

    # Then the instance, its memory and its process are in the snapshot
    assert [i["uuid"] for i in row["mig"]["instances"]][-1] == mig.uuid
    assert row["mig"]["instances"][-1]["memory"]["used"] == 5 * GIB
    assert {p["pid"]: p["mig"] for p in row["processes"]} == {101: 0, 202: 3}
    assert mig.uuid in {i.uuid for i in sampler.devices[0].mig_instances}
    sampler.stop()

"""A process list that fails to read is unknown, not empty: the last list is kept, marked stale.

The sampler runs on simulated seconds (each round is given its time); the driver is the fake
pynvml, whose process-list calls are made to time out.
"""

from __future__ import annotations

import sys

import pynvml
import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.server.sampling.process_list import STALE_PROCESSES_SECONDS
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

GIB = 2**30
PROCESS_LIST = "nvmlDeviceGetComputeRunningProcesses_v3"


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    """Two GPUs with one process each, installed as ``pynvml``."""
    fake = FakeNvml(gpus=[FakeGpu(processes=[FakeProcess(10 + i, GIB)]) for i in range(2)])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def every_second() -> Sampler:
    """An opened sampler whose every group is due each simulated second."""
    sampler = Sampler(
        NvmlBackend(), interval=1.0, slow_interval=1.0, process_interval=1.0, budget=1.0
    )
    sampler.open()
    return sampler


def round_at(sampler: Sampler, now: float) -> tuple[GpuReading, ...]:
    """One round at simulated second ``now``; the GPUs as published."""
    sampler._schedule.tokens_at = now
    sampler._sample_round(now)
    return sampler.latest.gpus


def test_a_failed_process_read_keeps_the_last_list_marked_stale(fake):
    """One timeout: the list read before it stays, with the reason; the next read is fresh."""
    # Given a sampler that has read both GPUs' processes
    sampler = every_second()
    round_at(sampler, 100.0)

    # When GPU 0's process list times out once, then answers again
    fake.inject(PROCESS_LIST, pynvml.NVML_ERROR_TIMEOUT, times=1, gpu=0)
    failed = round_at(sampler, 101.0)
    recovered = round_at(sampler, 102.0)

    # Then the failed round shows the last list, stale with the reason, not "no processes"
    assert [(p.pid, p.used_memory) for p in failed[0].processes] == [(10, GIB)]
    assert failed[0].processes_stale == "NVMLError_Timeout: Timeout"
    assert "Timeout" in failed[0].errors["processes"]
    assert failed[1].processes_stale is None
    # And the JSON says so too
    row = sampler.latest.to_json()["gpus"][0]
    assert row["processes_stale"] is None  # the latest round is the recovered one
    # And the next good read is fresh
    assert [p.pid for p in recovered[0].processes] == [10]
    assert recovered[0].processes_stale is None
    assert "processes" not in recovered[0].errors


def test_a_process_read_that_never_answered_is_empty_and_stale(fake):
    """No list was ever read: empty, but marked stale, so nobody reads it as "no processes"."""
    # Given GPU 1's process list timing out from the first round
    fake.inject(PROCESS_LIST, pynvml.NVML_ERROR_TIMEOUT, gpu=1)
    sampler = every_second()

    # When the first round runs
    gpus = round_at(sampler, 100.0)

    # Then
    assert gpus[1].processes == ()
    assert gpus[1].processes_stale == "NVMLError_Timeout: Timeout"
    assert gpus[1].to_json()["processes_stale"] == "NVMLError_Timeout: Timeout"
    assert [p.pid for p in gpus[0].processes] == [10]


def test_a_stale_list_is_dropped_once_too_old_and_stays_marked(fake):
    """Kept while younger than the bound; then emptied, still stale, with why."""
    # Given a list read at second 100, then the process list failing every round
    sampler = every_second()
    round_at(sampler, 100.0)
    fake.inject(PROCESS_LIST, pynvml.NVML_ERROR_TIMEOUT, gpu=0)

    # When rounds run up to the bound, and one past it
    within = round_at(sampler, 100.0 + STALE_PROCESSES_SECONDS)
    past = round_at(sampler, 101.0 + STALE_PROCESSES_SECONDS)

    # Then the list is kept up to the bound, and dropped after it, still marked stale
    assert [p.pid for p in within[0].processes] == [10]
    assert past[0].processes == ()
    assert past[0].processes_stale.startswith("NVMLError_Timeout: Timeout; ")
    assert f"{STALE_PROCESSES_SECONDS:g} s" in past[0].processes_stale

    # When the list answers again
    fake.clear()
    fresh = round_at(sampler, 102.0 + STALE_PROCESSES_SECONDS)

    # Then
    assert [p.pid for p in fresh[0].processes] == [10] and fresh[0].processes_stale is None


def test_processes_stale_goes_through_json_both_ways():
    """The field is in the contract's row and read back from it; missing reads as fresh."""
    reading = GpuReading(index=0, uuid="GPU-x", processes_stale="NVMLError_Timeout: Timeout")

    row = reading.to_json()

    assert row["processes_stale"] == "NVMLError_Timeout: Timeout"
    assert GpuReading.from_json(row) == reading
    assert GpuReading.from_json({"index": 0, "uuid": "GPU-x"}).processes_stale is None


def test_a_lost_gpu_s_process_list_is_stale_not_current(fake):
    """A GPU that stops answering: its last list is not this round's either; it says why."""
    # Given a sampler that has read both GPUs' processes
    sampler = every_second()
    round_at(sampler, 100.0)

    # When GPU 1 falls off the bus, for a round and past the bound
    fake.gpus[1].lost = True
    lost = round_at(sampler, 101.0)
    later = round_at(sampler, 102.0 + STALE_PROCESSES_SECONDS)

    # Then the list is kept and marked stale with the reason, then dropped, still marked
    assert lost[1].lost is True
    assert [p.pid for p in lost[1].processes] == [11]
    assert lost[1].processes_stale == "the GPU is lost: GPU is lost"
    assert later[1].processes == () and later[1].processes_stale.startswith("the GPU is lost: ")
    assert lost[0].processes_stale is None

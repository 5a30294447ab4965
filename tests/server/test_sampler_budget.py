"""The sampler keeps its time inside NVML within nvml_budget, with the driver's real latencies.

The latencies pass on a simulated clock, which the fake NVML advances and the sampler times its
readings with: the figures are the same on a loaded machine as on an idle one.
"""

from __future__ import annotations

import sys
import time

import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.server.sampling.budget import plan
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

# Latencies measured on a desktop driver (PCIe samples a counter for 20 ms per call).
LATENCY = {
    "nvmlDeviceGetPcieThroughput": 0.020,
    "nvmlDeviceGetComputeRunningProcesses_v3": 0.0045,
    "nvmlDeviceGetGraphicsRunningProcesses_v3": 0.0045,
    "nvmlDeviceGetFanSpeed": 0.00014,
    "nvmlDeviceGetMemoryInfo": 0.00001,
}


class DriverClock:
    """Time that passes only inside NVML calls, by their latencies."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        """A call's latency passes."""
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def driver_clock() -> DriverClock:
    """The simulated clock the fake NVML and the sampler share."""
    return DriverClock()


@pytest.fixture
def fake(monkeypatch, driver_clock):
    """Eight GPUs with one process each, answering at the driver's latencies."""
    gpus = [FakeGpu(name="NVIDIA A100", processes=[FakeProcess(pid=1000 + i, used_memory=2**30)]) for i in range(8)]
    nvml = FakeNvml(gpus=gpus, latency=LATENCY, sleep=driver_clock.sleep, timer=driver_clock)
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module)
    return nvml


def run_rounds(sampler: Sampler, seconds: int) -> None:
    """Drive the sampler's rounds on a simulated clock, one per second."""
    start = time.monotonic()
    sampler._schedule.tokens_at = start
    for tick in range(seconds):
        sampler._sample_round(start + tick)


def test_driver_time_stays_within_budget_while_pcie_is_watched(fake, driver_clock):
    """With PCIe watched (the slowest reading), NVML time over two minutes is within 2%."""
    # Given a sampler over 8 GPUs whose first readings are done
    sampler = Sampler(NvmlBackend(), interval=1.0, budget=0.02, timer=driver_clock)
    sampler.open()
    run_rounds(sampler, 1)
    fake.reset_counters()
    # When a client watches PCIe for 120 simulated seconds
    release = sampler.watch_pcie()
    run_rounds(sampler, 120)
    release()
    # Then the time spent inside NVML is within the budget, counting the bucket it started with
    allowance = 0.02 * 120 + sampler._schedule.token_cap()
    assert fake.call_time <= allowance
    # And PCIe was read (not starved), far less often than its configured 2 s
    assert fake.calls["nvmlDeviceGetPcieThroughput"] >= 16
    assert sampler.stats["pcie"].interval > 10
    sampler.stop()


def test_fast_fields_keep_their_interval_when_slow_groups_stretch(fake):
    """Utilization and memory stay at 1 s while process lists and PCIe absorb the budget."""
    planned = plan(
        {"fast": 0.0002, "processes": 0.072, "slow": 0.004, "pcie": 0.32},
        {"fast": 1.0, "processes": 5.0, "slow": 5.0, "pcie": 2.0},
        0.02,
    ).intervals
    assert planned["fast"] == 1.0
    assert planned["pcie"] > 2.0
    load = 0.0002 / planned["fast"] + 0.072 / planned["processes"] + 0.004 / planned["slow"]
    assert load + 0.32 / planned["pcie"] <= 0.02 + 1e-9

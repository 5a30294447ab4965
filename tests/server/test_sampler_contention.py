"""A busy machine (a start storm of kernels) does not stretch the sampler's cadence for minutes.

Everything here runs on a simulated clock: the fake NVML's latencies and the waits a loaded
machine adds to every call (for a CPU, for the GIL) advance it, and the sampler's timer reads it.
"""

from __future__ import annotations

import sys

import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.server.sampling.budget import COST_WINDOW_SECONDS
from jupyter_tfgpu.server.sampling.sampler import Sampler
from jupyter_tfgpu.server.sampling.schedule import Ticker
from tests.fake_pynvml import FakeGpu, FakeMig, FakeNvml, FakeProcess

MIB = 2**20


class SimClock:
    """Simulated seconds; every NVML call advances it by its latency plus the machine's wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wait = 0.0  # added to every call while the machine is loaded

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.wait


def big_box(clock: SimClock, process_latency: float = 0.0045) -> FakeNvml:
    """8 GPUs, each split in 7 MIG slices, 200 processes over them; driver latencies per call."""
    gpus = []
    pid = 10_000
    for _ in range(8):
        procs = []
        for n in range(25):
            pid += 1
            procs.append(FakeProcess(pid, 256 * MIB, gpu_instance_id=n % 7 + 1, compute_instance_id=0))
        gpus.append(
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                mig_enabled=True,
                mig_devices=[FakeMig(gpu_instance_id=i + 1) for i in range(7)],
                processes=procs,
            )
        )
    fake = FakeNvml(gpus=gpus, sleep=clock.sleep, timer=clock.time)
    # Every device call costs something, so every call also pays the machine's wait.
    fake.latency = {name: 0.000012 for name in dir(fake.module) if name.startswith("nvmlDevice")}
    fake.latency["nvmlDeviceGetComputeRunningProcesses_v3"] = process_latency
    fake.latency["nvmlDeviceGetGraphicsRunningProcesses_v3"] = process_latency
    return fake


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def install(monkeypatch):
    def install(fake: FakeNvml) -> FakeNvml:
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        return fake

    return install


def make_sampler(clock: SimClock) -> Sampler:
    sampler = Sampler(NvmlBackend(), interval=1.0, budget=0.02, clock=clock.time, timer=clock.time)
    sampler.open()
    sampler._schedule.tokens_at = clock.now
    return sampler


def run(sampler: Sampler, clock: SimClock, seconds: float) -> list[tuple[float, float, float]]:
    """The worker's loop on the simulated clock: (round start, fast interval, snapshot age)."""
    trace = []
    end = clock.now + seconds
    next_tick = clock.now
    while clock.now < end:
        clock.now = max(clock.now, next_tick)
        sampler._sample_round(clock.now)
        next_tick = max(next_tick + sampler.stats["fast"].interval, clock.now + 0.001)
        # The oldest the published snapshot gets: just before the next round publishes.
        age = max(next_tick, clock.now) - sampler.latest.taken
        trace.append((sampler.latest.taken, sampler.stats["fast"].interval, age))
    return trace


def test_a_storm_at_start_holds_the_freshness_floor_and_recovers_in_seconds(clock, install):
    """Loaded from the first reading: the fast group stays within 5x, back to 1 s at once after."""
    # Given the big box, the server starting while 30 kernels start (5 ms of waits per call)
    fake = install(big_box(clock))
    clock.wait = 0.005
    sampler = make_sampler(clock)

    # When the storm lasts 90 s, then the machine is quiet for 60 s
    storm = run(sampler, clock, 90)
    clock.wait = 0.0
    storm_end = clock.now
    fake.reset_counters()
    after = run(sampler, clock, 60)

    # Then the budget stretched the fast group during the storm, never past its floor
    assert max(interval for _, interval, _ in storm) == pytest.approx(5.0)
    assert max(age for *_, age in storm) <= 5.0 + 1.0  # the floor plus one slow round
    assert sampler.describe()["groups"]["fast"]["max_interval"] == 5.0
    # And the cadence is back at 1 s within 10 s of the storm's end, and stays there
    back = next(t for t, interval, _ in after if interval == 1.0)
    assert back - storm_end <= 10.0
    assert all(interval == 1.0 for t, interval, _ in after if t >= back)
    # And once quiet, the time inside the driver is within the budget
    assert fake.call_time / 60 <= 0.02


def test_a_storm_after_quiet_time_does_not_move_the_cadence(clock, install):
    """Waits on a busy machine do not read as driver time: the cadences keep their interval."""
    # Given the big box sampled for a quiet minute
    install(big_box(clock))
    sampler = make_sampler(clock)
    run(sampler, clock, 60)
    assert sampler.stats["fast"].interval == 1.0
    quiet_processes = sampler.stats["processes"].interval

    # When 30 kernels start (waits on every call for 60 s) and ask for their processes
    clock.wait = 0.005
    storm_start = clock.now
    sampler.refresh_processes()
    trace = run(sampler, clock, 60)

    # Then memory and utilization kept their 1 s, and the process list kept its cadence
    assert {interval for _, interval, _ in trace} == {1.0}
    assert max(age for *_, age in trace) <= 1.0 + 1.0
    assert sampler.stats["processes"].interval == pytest.approx(quiet_processes)
    # And the kernels' processes were listed in the first round of the storm
    first_round = trace[0][0]
    assert first_round == storm_start
    assert sampler.stats["processes"].calls >= 2
    assert sampler.describe()["stretch_reason"] is None


def test_a_lasting_rise_in_driver_time_is_planned_with(clock, install):
    """A driver that really got slower is believed once every reading of the window says so."""
    # Given the big box sampled for a quiet minute
    fake = install(big_box(clock))
    sampler = make_sampler(clock)
    run(sampler, clock, 60)
    before = sampler.stats["processes"].cost

    # When the process lists become 4 times as slow for good
    for name in ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3"):
        fake.latency[name] *= 4
    run(sampler, clock, COST_WINDOW_SECONDS + 2 * sampler.stats["processes"].interval + 30)

    # Then the estimate followed, and the process list was stretched to stay in budget
    assert sampler.stats["processes"].cost == pytest.approx(4 * before, rel=0.05)
    planned = sampler.stats["processes"]
    assert planned.cost / planned.interval <= 0.02


def test_status_says_why_figures_refresh_less_often(clock, install):
    """GET status names the stretched group, its cost, the budget and the floor."""
    # Given a storm from the start
    install(big_box(clock))
    clock.wait = 0.005
    sampler = make_sampler(clock)

    # When it has run for a while
    run(sampler, clock, 30)
    described = sampler.describe()

    # Then
    fast = described["groups"]["fast"]
    assert fast["stretched"] is True
    assert fast["interval"] == 5.0 and fast["configured_interval"] == 1.0
    assert fast["measured_ms"] >= fast["cost_ms"] > 0
    assert described["over_budget"] == ["fast"]
    reason = described["stretch_reason"]
    assert "every 5.0 s instead of 1 s" in reason
    assert "TFGPU.nvml_budget" in reason and "freshness floor" in reason


def test_extra_rounds_do_not_push_the_next_scheduled_one_away():
    """Rounds on kernel starts come on top of the cadence; a shortened interval applies at once."""
    # Given rounds every 5 s (stretched), the last scheduled at t=100
    ticker = Ticker(100.0)
    ticker.after_round(100.0, 100.1, 5.0)
    assert ticker.due(5.0) == 105.0

    # When kernels start at 101, 102 and 104 and each wakes the sampler for an extra round
    for started in (101.0, 102.0, 104.0):
        ticker.after_round(started, started + 0.2, 5.0)

    # Then the scheduled round is still due at 105
    assert ticker.due(5.0) == 105.0
    # And when the budget brings the interval back to 1 s, the next round is due 1 s after 100
    assert ticker.due(1.0) == 101.0
    # And a scheduled round keeps the grid
    ticker.after_round(105.0, 105.3, 1.0)
    assert ticker.due(1.0) == 106.0

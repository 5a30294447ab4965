"""Opening NVML per GPU: one bad GPU is listed lost (with why) and opened again, the others are
read from the first round; zero GPUs is looked at again; the open runs in the sampler's thread."""

from __future__ import annotations

import sys
import threading
import time

import pynvml
import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.server.sampling.opening import LOST_RETRY_SECONDS
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.fake_pynvml import FakeGpu, FakeLink, FakeNvml

GIB = 2**30


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def install(monkeypatch):
    """Build a FakeNvml and make it the `pynvml` the backend imports."""

    def _install(**kwargs) -> FakeNvml:
        fake = FakeNvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        return fake

    return _install


def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met within the time allowed")
        time.sleep(0.01)


def every_second(**kwargs) -> Sampler:
    """A sampler over NVML whose every group is due each round, with budget to spare."""
    return Sampler(
        NvmlBackend(), interval=1.0, slow_interval=1.0, process_interval=1.0, budget=1.0, **kwargs
    )


def round_at(sampler: Sampler, now: float) -> list[dict]:
    """One round at simulated second ``now``; the GPU rows as published."""
    sampler._schedule.tokens_at = now
    sampler._sample_round(now)
    return sampler.latest.to_json()["gpus"]


def three_gpus(install) -> FakeNvml:
    return install(gpus=[FakeGpu(temperature=40 + i, memory_used=(i + 1) * GIB) for i in range(3)])


# (call, error on GPU 1 only, what GPU 1's lost_reason says)
DEVICE_FAULTS = {
    "memory-timeout": (
        "nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_TIMEOUT, "nvmlDeviceGetMemoryInfo_v2: Timeout"
    ),
    "uuid-timeout": ("nvmlDeviceGetUUID", pynvml.NVML_ERROR_TIMEOUT, "nvmlDeviceGetUUID: Timeout"),
    "handle-irq": (
        "nvmlDeviceGetHandleByIndex", pynvml.NVML_ERROR_IRQ_ISSUE,
        "nvmlDeviceGetHandleByIndex: Interrupt Request Issue",
    ),
    "handle-lost": ("nvmlDeviceGetHandleByIndex", pynvml.NVML_ERROR_GPU_IS_LOST, "GPU is lost"),
    "name-oserror": (
        "nvmlDeviceGetName", OSError("libnvidia-ml.so.1: bad ELF"),
        "nvmlDeviceGetName: OSError: libnvidia-ml.so.1: bad ELF",
    ),
    "mig-mode-timeout": ("nvmlDeviceGetMigMode", pynvml.NVML_ERROR_TIMEOUT, "Timeout"),
    "nvlink-count-timeout": ("nvmlDeviceGetFieldValues", pynvml.NVML_ERROR_TIMEOUT, "Timeout"),
}  # fmt: skip


@pytest.mark.parametrize(("call", "error", "said"), DEVICE_FAULTS.values(), ids=DEVICE_FAULTS.keys())
def test_one_gpu_failing_at_open_is_lost_and_the_others_are_read(install, call, error, said):
    """A fault on one GPU's facts at open: that GPU is a lost row with why; the rest are read."""
    # Given three GPUs, GPU 1's facts failing at open
    fake = three_gpus(install)
    fake.inject(call, error, gpu=1)
    sampler = every_second(clock=FakeClock())

    # When it opens and takes its first round
    opened = sampler.open()
    rows = round_at(sampler, 100.0)

    # Then the server has GPUs, GPU 1 says why it is not read, GPUs 0 and 2 are read
    assert opened is True and sampler.available is True and sampler.reason is None
    assert sampler.device_count == 3
    assert [r["lost"] for r in rows] == [False, True, False]
    assert rows[1]["lost_reason"].startswith("the device could not be opened: ")
    assert said in rows[1]["lost_reason"]
    assert [rows[0]["temperature"], rows[2]["temperature"]] == [40, 42]
    assert rows[2]["memory"]["used"] == 3 * GIB
    assert sampler.devices[2].uuid == fake.gpus[2].uuid
    sampler.stop()


def test_a_gpu_that_failed_at_open_is_opened_again_and_read(install):
    """The failed GPU is opened again on the lost-GPU cadence, and read once it answers."""
    # Given GPU 1's UUID timing out at open
    fake = three_gpus(install)
    fake.inject("nvmlDeviceGetUUID", pynvml.NVML_ERROR_TIMEOUT, gpu=1)
    sampler = every_second()
    sampler.open()
    round_at(sampler, 100.0)
    uuid_calls = fake.calls["nvmlDeviceGetUUID"]

    # When rounds run before its retry is due, then the driver answers and the retry comes
    early = round_at(sampler, 100.0 + LOST_RETRY_SECONDS - 1)
    asked_early = fake.calls["nvmlDeviceGetUUID"] - uuid_calls
    fake.clear()
    back = round_at(sampler, 100.0 + LOST_RETRY_SECONDS)

    # Then it was left alone until due, then opened with its real facts and read
    assert early[1]["lost"] is True and asked_early == 0
    assert back[1]["lost"] is False and back[1]["lost_reason"] is None
    assert back[1]["uuid"] == fake.gpus[1].uuid
    assert back[1]["memory"]["total"] == 80 * GIB and back[1]["temperature"] == 41
    assert sampler.devices[1].uuid == fake.gpus[1].uuid


def test_a_gpu_lost_at_open_comes_back(install):
    """A GPU off the bus at open is tried again, and monitored once it answers."""
    # Given GPU 0 lost at open
    fake = three_gpus(install)
    fake.gpus[0].lost = True
    sampler = every_second()
    sampler.open()
    lost = round_at(sampler, 100.0)
    still = round_at(sampler, 100.0 + LOST_RETRY_SECONDS)

    # When it is back on the bus at its next retry
    fake.gpus[0].lost = False
    back = round_at(sampler, 100.0 + 2 * LOST_RETRY_SECONDS)

    # Then
    assert lost[0]["lost"] is True and "GPU is lost" in lost[0]["lost_reason"]
    assert still[0]["lost"] is True
    assert back[0]["lost"] is False and back[0]["temperature"] == 40
    assert back[0]["uuid"] == fake.gpus[0].uuid


def test_a_gpu_back_without_nvlink_shows_no_nvlink_figures_of_before(install):
    """A GPU that comes back from a loss with no NVLink links shows none of its old NVLink
    figures: the interconnect's reading replaces the last one whole."""
    # Given a GPU with NVLink whose interconnect is watched and was read
    fake = install(gpus=[FakeGpu(nvlink=[FakeLink(tx_kib=100, rx_kib=200)])])
    sampler = every_second(pcie_interval=1.0)
    sampler.open()
    release = sampler.watch_pcie()
    before = round_at(sampler, 100.0)

    # When it is lost, then answers again at its retry, its driver reporting no NVLink now
    fake.gpus[0].lost = True
    round_at(sampler, 101.0)
    fake.gpus[0].lost = False
    fake.gpus[0].nvlink = []
    back = round_at(sampler, 101.0 + LOST_RETRY_SECONDS)
    release()

    # Then
    assert before[0]["nvlink"]["tx_total"] == 100 * 1024
    assert back[0]["lost"] is False
    assert back[0]["nvlink"] == {
        "links": 0, "active": None, "tx": None, "rx": None, "tx_total": None, "rx_total": None,
        "reason": "this GPU has no NVLink",
    }  # fmt: skip
    sampler.stop()


def test_zero_gpus_then_some_are_found_on_a_retry(install):
    """A driver that found no GPU yet is opened again on the back-off, and finds them later."""
    # Given a driver that has not brought its GPU up yet
    fake = install(gpus=[])
    clock = FakeClock()
    sampler = Sampler(NvmlBackend(), interval=1.0, clock=clock)
    assert sampler.open() is False
    assert (sampler.reason, sampler.retry_in, fake.initialized) == ("nvml: no GPU found", 5.0, False)

    # When the GPU comes up and the retry is due
    fake.add_gpu(FakeGpu(temperature=33))
    clock.now += 5.0
    opened = sampler.retry_open()

    # Then it is found and read
    assert opened is True and sampler.available is True and sampler.device_count == 1
    assert round_at(sampler, 100.0)[0]["temperature"] == 33
    sampler.stop()
    assert not fake.initialized


def test_start_does_not_wait_for_nvml_init(install):
    """start() returns while nvmlInit hangs; status says it is opening; the worker opens it."""
    # Given an nvmlInit that hangs until the test lets it go
    release = threading.Event()
    fake = install(gpus=[FakeGpu(temperature=44)], sleep=lambda _: release.wait(10))
    fake.latency["nvmlInit"] = 1.0

    # When the sampler starts
    sampler = Sampler(NvmlBackend(), interval=0.05)
    sampler.start()
    try:
        # Then it returned at once: the open is still under way, and it says so
        assert fake.calls["nvmlInit"] <= 1 and not fake.initialized
        assert sampler.opening is True
        assert sampler.available is False and sampler.reason == "opening the nvml backend"
        assert sampler.latest.to_json()["gpus"] == []

        # When nvmlInit returns
        release.set()

        # Then the worker opens NVML and samples
        wait_for(lambda: not sampler.opening)
        assert sampler.available is True and sampler.rounds >= 1
        assert sampler.latest.to_json()["gpus"][0]["temperature"] == 44
    finally:
        release.set()
        sampler.stop()


def test_the_open_is_logged_when_it_completes(install, caplog):
    """The start-up line names the GPUs once the worker opened them; a bad GPU is a warning."""
    # Given three GPUs, GPU 2's memory timing out at open
    fake = three_gpus(install)
    fake.inject("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_TIMEOUT, gpu=2)
    sampler = Sampler(NvmlBackend(), interval=0.05)

    # When it starts and opens
    with caplog.at_level("INFO", logger="jupyter_tfgpu.server.sampling.sampler"):
        sampler.start()
        wait_for(lambda: sampler.rounds >= 1)
        sampler.stop()

    # Then
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "jupyter-tfgpu: backend nvml, 3 GPU(s)") in lines
    warned = [m for level, m in lines if level == "WARNING" and m.startswith("GPU 2: ")]
    assert len(warned) == 1 and "nvmlDeviceGetMemoryInfo_v2: Timeout" in warned[0]

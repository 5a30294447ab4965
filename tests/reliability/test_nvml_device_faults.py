"""One GPU's faults stay that GPU's, through a real jupyter_server and the fake pynvml.

A GPU failing at open is a lost row with why (the others are served from the first request)
and is opened again; a hung nvmlInit does not hold the server's start; zero GPUs is looked at
again; a silent NVLink link does not make the exported counters drop; a MIG slice made while
the server runs is seen with its processes.
"""

from __future__ import annotations

import json
import threading

import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_pynvml import FakeGpu, FakeLink, FakeMig, FakeNvml, FakeProcess
from tests.kernel_helpers import poll

GIB = 2**30
SHORT = 0.05  # the server retries opens and lost GPUs this often here (5 s and 30 s in production)


@pytest.fixture
def init_gate() -> threading.Event:
    """Holds nvmlInit, where a test hangs it, until set."""
    return threading.Event()


@pytest.fixture
def hang_init() -> bool:
    """Whether nvmlInit hangs until ``init_gate`` is set."""
    return False


@pytest.fixture
def gpu_count() -> int:
    return 4


@pytest.fixture
def fake_nvml(init_gate, hang_init, gpu_count) -> FakeNvml:
    """Healthy GPUs; GPU 0 has two NVLink links, GPU 3 one MIG slice with a process."""
    gpus = [FakeGpu(temperature=40 + i, memory_used=(i + 1) * GIB) for i in range(gpu_count)]
    if gpu_count == 4:
        gpus[0].nvlink = [FakeLink(tx_kib=1000, rx_kib=1000), FakeLink(tx_kib=1000, rx_kib=1000)]
        gpus[3].mig_enabled = True
        gpus[3].mig_devices = [FakeMig(gpu_instance_id=1)]
        gpus[3].processes = [FakeProcess(4001, GIB, gpu_instance_id=1, compute_instance_id=0)]
    fake = FakeNvml(gpus=gpus, sleep=lambda _: init_gate.wait(30))
    if hang_init:
        fake.latency["nvmlInit"] = 1.0  # "sleeps" on the gate
    return fake


@pytest.fixture
def start_faults() -> list[tuple]:
    """inject() arguments in force before the server starts."""
    return []


@pytest.fixture
def tfgpu_config():
    """NVML asked for by name, sampled fast, every group due often."""
    return {
        "backend": "nvml",
        "sample_interval": 0.1,
        "slow_interval": 0.1,
        "process_interval": 0.1,
        "nvml_budget": 0.5,
        "history_seconds": 10,
    }


@pytest.fixture(autouse=True)
def installed_nvml(installed_nvml, monkeypatch, start_faults) -> FakeNvml:
    """The fake installed as ``pynvml`` with the start faults, and short retries."""
    for name in ("OPEN_RETRY_SECONDS", "OPEN_RETRY_MAX_SECONDS", "LOST_RETRY_SECONDS"):
        monkeypatch.setattr(f"jupyter_tfgpu.server.sampling.opening.{name}", SHORT)
    for fault in start_faults:
        installed_nvml.inject(*fault)
    return installed_nvml


async def api(jp_fetch, *path: str) -> dict:
    """GET ``tfgpu/api/<path>``, decoded."""
    response = await jp_fetch("tfgpu", "api", *path)
    return json.loads(response.body)


@pytest.mark.parametrize(
    "start_faults", [[("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_TIMEOUT, None, 1)]]
)
async def test_one_gpu_timing_out_at_open_does_not_blind_the_others(jp_fetch, installed_nvml):
    """GPU 1's memory timing out at start: the other three are served at once, GPU 1 says why,
    and it is opened again and served once it answers."""
    # Given a server whose GPU 1 timed out at open (and keeps timing out for now)
    # When status and gpus are asked
    status = await api(jp_fetch, "status")
    first = (await api(jp_fetch, "gpus"))["gpus"]

    # Then the server is available with four GPUs; GPU 1 is a lost row with the reason
    assert status["available"] is True and status["device_count"] == 4
    assert [g["lost"] for g in first] == [False, True, False, False]
    assert "nvmlDeviceGetMemoryInfo_v2: Timeout" in first[1]["lost_reason"]

    async def read():
        rows = (await api(jp_fetch, "gpus"))["gpus"]
        return rows if rows[2]["temperature"] is not None else None

    rows = await poll(read)
    assert [rows[0]["temperature"], rows[2]["temperature"], rows[3]["temperature"]] == [40, 42, 43]

    # When the driver answers for GPU 1 again
    installed_nvml.clear()

    async def back():
        rows = (await api(jp_fetch, "gpus"))["gpus"]
        return rows if not rows[1]["lost"] and rows[1]["temperature"] is not None else None

    rows = await poll(back)

    # Then it is served with its real facts
    assert rows[1]["uuid"] == installed_nvml.gpus[1].uuid
    assert rows[1]["memory"]["used"] == 2 * GIB and rows[1]["temperature"] == 41


@pytest.mark.parametrize(("hang_init", "tfgpu_wait_open"), [(True, False)])
async def test_a_hung_nvml_init_does_not_hold_the_server_start(jp_fetch, init_gate):
    """The server serves while nvmlInit hangs: status says the backend is opening; then GPUs."""
    try:
        # Given a server started while nvmlInit hangs
        # When status and gpus are asked
        status = await api(jp_fetch, "status")
        gpus = await api(jp_fetch, "gpus")

        # Then they answer: not available yet, and why
        assert status["available"] is False
        assert status["reason"] == "opening the nvml backend"
        assert gpus["gpus"] == []

        # When nvmlInit returns
        init_gate.set()

        async def opened():
            data = await api(jp_fetch, "status")
            return data if data["available"] else None

        # Then the GPUs are found
        assert (await poll(opened))["device_count"] == 4
    finally:
        init_gate.set()


@pytest.mark.parametrize("gpu_count", [0])
async def test_a_server_that_found_no_gpu_looks_again(jp_fetch, installed_nvml):
    """No GPU at start (a driver still bringing them up): unavailable, then the GPU is found."""
    # Given a server whose driver had no GPU at start
    status = await api(jp_fetch, "status")
    assert (status["available"], status["reason"]) == (False, "nvml: no GPU found")

    # When the driver brings a GPU up
    installed_nvml.add_gpu(FakeGpu(temperature=37))

    async def found():
        rows = (await api(jp_fetch, "gpus"))["gpus"]
        return rows if rows and rows[0]["temperature"] is not None else None

    # Then it is found and served
    assert (await poll(found))[0]["temperature"] == 37
    assert (await api(jp_fetch, "status"))["device_count"] == 1


async def nvlink_totals(jp_fetch) -> dict[str, float]:
    """GPU 0's exported NVLink counters, by metric name."""
    text = (await jp_fetch("metrics")).body.decode()
    return {
        family.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("tfgpu_gpu_nvlink_") and family.type == "counter"
        for sample in family.samples
        if sample.labels.get("gpu") == "0" and sample.name.endswith("_total")
    }


async def test_a_silent_nvlink_link_does_not_make_the_counters_drop(jp_fetch, installed_nvml):
    """One link not answering: /metrics' NVLink counters hold (no counter reset for rate())."""
    # Given a server reading the interconnect, its counters exported
    link = installed_nvml.gpus[0].nvlink[1]

    async def exported():
        await jp_fetch("tfgpu", "api", "gpus", params={"pcie": "true"})
        totals = await nvlink_totals(jp_fetch)
        return totals if totals.get("tfgpu_gpu_nvlink_transmit_bytes") == 2000 * 1024 else None

    before = await poll(exported)

    # When link 1 stops answering while link 0 carries 1 MiB
    link.error = pynvml.NVML_ERROR_TIMEOUT
    installed_nvml.gpus[0].nvlink[0].tx_kib += 1024

    async def moved():
        totals = await nvlink_totals(jp_fetch)
        return totals if totals["tfgpu_gpu_nvlink_transmit_bytes"] != before[
            "tfgpu_gpu_nvlink_transmit_bytes"] else None

    during = await poll(moved)

    # Then the counters never went down: link 1 counts at its last value
    assert during["tfgpu_gpu_nvlink_transmit_bytes"] == (2000 + 1024) * 1024
    assert during["tfgpu_gpu_nvlink_receive_bytes"] == before["tfgpu_gpu_nvlink_receive_bytes"]


async def test_a_mig_slice_made_while_running_is_served_with_its_process(jp_fetch, installed_nvml):
    """A slice made after start with a 5 GiB process on it: in GET gpus, with its process."""
    # Given a server that has read GPU 3's one slice
    async def one_slice():
        row = (await api(jp_fetch, "gpus"))["gpus"][3]
        return row if row["processes"] else None

    await poll(one_slice)

    # When a slice is made and a 5 GiB process starts in it
    mig = installed_nvml.create_mig(3, 2, FakeMig(memory_total=20 * GIB, memory_used=5 * GIB,
                                                  gpu_instance_id=5, profile="2g.20gb"))  # fmt: skip
    installed_nvml.gpus[3].processes.append(
        FakeProcess(4002, 5 * GIB, gpu_instance_id=5, compute_instance_id=0)
    )

    async def two_slices():
        row = (await api(jp_fetch, "gpus"))["gpus"][3]
        return row if len(row["processes"]) == 2 and len(row["mig"]["instances"]) == 2 else None

    row = await poll(two_slices)

    # Then the slice and its process are there
    assert row["mig"]["instances"][1]["uuid"] == mig.uuid
    assert {p["pid"]: (p["mig"], p["used_memory"]) for p in row["processes"]} == {
        4001: (0, GIB), 4002: (2, 5 * GIB)
    }

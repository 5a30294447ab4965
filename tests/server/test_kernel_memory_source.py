"""Where each kernel's GPU memory figure comes from (NVML or its own report), and when it is
unknown: a report that was the figure and stopped, a GPU whose process list could not be read.

Unit tests work on snapshots and reports with an injected clock; the end-to-end tests run a real
server and kernels over the fake NVML (tests/fake_pynvml.py), whose process list holds a PID of
another namespace, as a container without the host's PIDs sees it.
"""

from __future__ import annotations

import asyncio
import json

import pynvml
import pytest

from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.server.api.handlers import SERVICES_KEY
from jupyter_tfgpu.server.kernels.channel import REPORT_TTL, KernelReports
from jupyter_tfgpu.server.kernels.memory import KernelMemoryReader
from jupyter_tfgpu.server.sampling.sampler import Snapshot
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess
from tests.kernel_helpers import kernel_headers, kernel_token, poll, start_session
from tests.server.test_container_attribution import unused_pid

GIB = 2**30
MIB = 2**20
TIMEOUT = "NVMLError_Timeout: Timeout"
PROCESS_LIST = "nvmlDeviceGetComputeRunningProcesses_v3"


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def snapshot(*gpus: dict) -> Snapshot:
    """A snapshot of GPUs given as contract rows."""
    return Snapshot(1.0, False, tuple(GpuReading.from_json(gpu) for gpu in gpus))


def gpu(index: int, processes=(), stale: str | None = None) -> dict:
    """GPU ``index`` (UUID GPU-<index>) with process rows (pid, bytes, kernel id or None)."""
    return {
        "index": index,
        "uuid": f"GPU-{index}",
        "processes_stale": stale,
        "processes": [
            {"pid": pid, "used_memory": used, "kernel_id": kernel, "attributed_by": "pid" if kernel else None}
            for pid, used, kernel in processes
        ],
    }


def report(reports: KernelReports, kernel_id: str, held: dict[str, int], framework="torch"):
    """The kernel's reporter says it holds ``held`` ({GPU UUID: bytes})."""
    devices = [{"uuid": uuid, "reserved": size} for uuid, size in held.items()]
    reports.put(kernel_id, {"framework": framework, "pid": 7, "devices": devices})


# -- unit: the reader ---------------------------------------------------------------------------


def test_each_kernel_says_where_its_figure_comes_from():
    """NVML by PID, its own report, both on different GPUs, or nothing at all."""
    # Given GPU 0 listing k1's and k3's PIDs, and k2 and k3 reporting GPU 1
    reports = KernelReports(clock=Clock())
    report(reports, "k2", {"GPU-1": GIB})
    report(reports, "k3", {"GPU-1": 2 * GIB})
    latest = snapshot(gpu(0, [(10, GIB, "k1"), (30, GIB, "k3")]), gpu(1, [(999, 5 * GIB, None)]))
    reader = KernelMemoryReader(lambda: latest, reports)
    # When each kernel's memory is read / Then each says where its figures come from
    assert (reader.of("k1").source, reader.of("k1").unknown) == ("nvml", None)
    assert (reader.of("k2").source, reader.of("k2").total) == ("kernel_report", GIB)
    assert (reader.of("k3").source, reader.of("k3").total) == ("mixed", 3 * GIB)
    assert reader.of("k4").as_dict() == {"total": 0, "source": None, "unknown": None, "per_gpu": []}


def test_a_report_that_was_the_figure_and_stopped_is_unknown_not_zero():
    """Its report expires: the kernel's memory is unknown, and says since when; a restart clears it."""
    # Given a kernel whose only figure is its own report of 3 GiB on GPU 1
    clock = Clock()
    reports = KernelReports(clock=clock)
    report(reports, "k1", {"GPU-1": 3 * GIB})
    latest = snapshot(gpu(0), gpu(1, [(999, 3 * GIB, None)]))
    reader = KernelMemoryReader(lambda: latest, reports)
    assert reader.of("k1").total == 3 * GIB and reader.of("k1").unknown is None
    # When no report comes for longer than a report counts
    clock.now += REPORT_TTL + 15
    memory = reader.of("k1")
    # Then its memory is unknown, not 0 held, and the reason says how long it has been silent
    assert memory.source is None and memory.per_gpu == ()
    assert memory.unknown == (
        "its own GPU memory report, the only figure for it on GPU 1, stopped arriving "
        f"({REPORT_TTL + 15:.0f} s since the last one)"
    )
    # And a new report makes it known again
    report(reports, "k1", {"GPU-1": GIB})
    assert reader.of("k1").unknown is None and reader.of("k1").total == GIB
    # And a restart (the registry forgets what the previous process said) clears it
    clock.now += REPORT_TTL + 1
    assert reader.of("k1").unknown is not None
    reader.forget("k1")
    assert reader.of("k1").unknown is None and reader.kernel_ids() == set()


def test_a_report_that_stops_where_nvml_has_the_figure_changes_nothing():
    """On a host NVML matches the kernel's PIDs: its reporter going quiet is no loss."""
    clock = Clock()
    reports = KernelReports(clock=clock)
    report(reports, "k1", {"GPU-0": GIB})
    latest = snapshot(gpu(0, [(10, 2 * GIB, "k1")]))
    reader = KernelMemoryReader(lambda: latest, reports)
    assert reader.of("k1").source == "nvml"
    clock.now += REPORT_TTL + 1
    assert (reader.of("k1").source, reader.of("k1").unknown) == ("nvml", None)
    assert reader.kernel_ids() == set()


def test_a_stale_process_list_makes_the_kernels_that_may_use_that_gpu_unknown():
    """GPU 0's process list failed: kernels that may use GPU 0 are unknown, others are not."""
    # Given GPU 0's list stale (kept from before), GPU 1's fresh
    reports = KernelReports(clock=Clock())
    latest = snapshot(gpu(0, [(10, GIB, "k1")], stale=TIMEOUT), gpu(1, [(20, GIB, "k2")]))
    reader = KernelMemoryReader(lambda: latest, reports)
    stale = f"GPU 0's process list could not be read ({TIMEOUT})"
    # When / Then: a kernel on GPU 0 shows the kept figure, and says it is unknown now
    assert reader.of("k1").total == GIB and reader.of("k1").unknown == stale
    # And one that may use any GPU, holding nothing in the kept list, is unknown too
    assert reader.of("k3").unknown == stale
    # And a kernel placed on GPU 1 only (by UUID or index), or on the CPU only, is known
    assert reader.of("k2", devices=["GPU-1"]).unknown is None
    assert reader.of("k2", devices=["1"]).unknown is None
    assert reader.of("k3", devices=[]).unknown is None
    # And a kernel whose figure on GPU 0 is its own report does not depend on NVML's list
    report(reports, "k4", {"GPU-0": GIB})
    assert (reader.of("k4").source, reader.of("k4").unknown) == ("kernel_report", None)


# -- end to end: real server and kernels, fake NVML --------------------------------------------


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """Two GPUs; GPU 0 lists a process of another PID namespace holding 3 GiB."""
    nvml = FakeNvml(gpus=[FakeGpu(memory_used=3 * GIB), FakeGpu()])
    nvml.gpus[0].processes.append(FakeProcess(pid=unused_pid(), used_memory=3 * GIB))
    return nvml


@pytest.fixture
def tfgpu_config():
    """NVML over the fake, quick process lists, a 1 GiB cap enforced in warn mode at once."""
    return {
        "backend": "nvml",
        "sample_interval": 0.1,
        "process_interval": 0.2,
        "max_memory_mb": 1024,
        "enforcement": "warn",
        "enforcement_grace": 0.0,
    }


async def kernel_view(jp_fetch, kernel_id: str) -> dict:
    """GET kernels/{id}."""
    return json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)


async def stream_summary(jp_ws_fetch, kernel_id: str, check) -> dict:
    """The kernel's summary in the first stream message for which ``check(summary)`` holds."""
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        for _ in range(100):
            message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
            mine = [k for k in message["kernels"] if k["id"] == kernel_id]
            if mine and check(mine[0]):
                return mine[0]
    finally:
        ws.close()
    raise AssertionError("no stream message showed the kernel as expected")


async def test_a_container_kernel_is_judged_by_its_report_and_unknown_once_it_stops(
    jp_fetch, jp_ws_fetch, jp_serverapp, fake_nvml
):
    """Its report is its figure everywhere (API, stream, enforcer); silence makes it unknown."""
    from jupyter_tfgpu.server.services import ENFORCEMENT_EVENT
    from tests.server.test_enforcement import listen

    events = listen(jp_serverapp, ENFORCEMENT_EVENT)
    services = jp_serverapp.web_app.settings[SERVICES_KEY]
    clock = Clock(services.reports.clock())
    services.reports.clock = clock
    # Given a kernel that reports 3 GiB on GPU 0, where NVML's PID cannot be matched
    kernel_id = (await start_session(jp_fetch, "boxed.ipynb"))["kernel"]["id"]
    token = await kernel_token(jp_serverapp, kernel_id)
    gpu0 = fake_nvml.gpus[0].uuid
    body = {"framework": "torch", "pid": 4242, "devices": [{"uuid": gpu0, "reserved": 3 * GIB}]}
    await jp_fetch(
        "tfgpu", "api", "kernel", "report",
        method="POST", body=json.dumps(body), headers=kernel_headers(token),
    )  # fmt: skip

    # When the server reads it / Then GET kernels/{id} and the stream say it is the kernel's report
    view = await kernel_view(jp_fetch, kernel_id)
    assert view["gpu_memory"]["source"] == "kernel_report"
    assert view["gpu_memory"]["unknown"] is None and view["gpu_memory"]["total"] == 3 * GIB
    summary = await stream_summary(jp_ws_fetch, kernel_id, lambda k: k["gpu_memory"] > 0)
    assert summary["gpu_memory_source"] == "kernel_report"
    assert summary["gpu_memory_unknown"] is None
    # And the enforcer's warning says the figure it judged is the kernel's own report
    await poll(lambda: asyncio.sleep(0, events), timeout=20)
    assert "by its own report" in events[0]["reason"]
    assert events[0]["memory_bytes"] == 3 * GIB

    # When the kernel's reports stop for longer than one counts
    clock.now += REPORT_TTL + 5

    # Then its memory is unknown, not 0, in the API and the stream
    view = await kernel_view(jp_fetch, kernel_id)
    assert view["gpu_memory"]["source"] is None and view["gpu_memory"]["total"] == 0
    assert "stopped arriving" in view["gpu_memory"]["unknown"]
    summary = await stream_summary(jp_ws_fetch, kernel_id, lambda k: k["gpu_memory_unknown"])
    assert "GPU 0" in summary["gpu_memory_unknown"]


async def test_a_process_list_that_times_out_makes_the_kernel_unknown(
    jp_fetch, jp_serverapp, fake_nvml
):
    """GPU 0's process list times out: GET kernels/{id} keeps the last figure and says why it
    is unknown now; the next good read clears it."""
    # Given a kernel whose process NVML lists on GPU 0 with 512 MiB
    kernel_id = (await start_session(jp_fetch, "stale.ipynb"))["kernel"]["id"]
    pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    fake_nvml.gpus[0].processes.append(FakeProcess(pid=pid, used_memory=512 * MIB))

    async def by_nvml():
        view = await kernel_view(jp_fetch, kernel_id)
        return view if view["gpu_memory"]["source"] == "nvml" else None

    await poll(by_nvml, timeout=20)

    # When GPU 0's process list starts timing out
    fake_nvml.inject(PROCESS_LIST, pynvml.NVML_ERROR_TIMEOUT, gpu=0)

    async def unknown():
        view = await kernel_view(jp_fetch, kernel_id)
        return view if view["gpu_memory"]["unknown"] else None

    view = await poll(unknown, timeout=20)

    # Then the kept figure is shown, with why it cannot be trusted now
    assert view["gpu_memory"]["total"] == 512 * MIB
    assert view["gpu_memory"]["unknown"] == (
        f"GPU 0's process list could not be read ({TIMEOUT})"
    )

    # When the list answers again, Then the figure is known again
    fake_nvml.clear()

    async def known():
        view = await kernel_view(jp_fetch, kernel_id)
        return view if view["gpu_memory"]["unknown"] is None else None

    await poll(known, timeout=20)

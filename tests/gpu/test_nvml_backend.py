"""NvmlBackend (and a Sampler over it) against the fake pynvml: units, errors, fallbacks."""

from __future__ import annotations

import sys
import time

import pynvml
import pytest

from jupyter_tfgpu.gpu import BackendUnavailable, GpuLost, NvmlBackend
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.fake_pynvml import FakeGpu, FakeLink, FakeMig, FakeNvml, FakeProcess

GIB = 2**30
MIB = 2**20


@pytest.fixture
def install(monkeypatch):
    """Build a FakeNvml and make it the `pynvml` the backend imports."""

    def _install(**kwargs) -> FakeNvml:
        fake = FakeNvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        return fake

    return _install


def sampled(sampler: Sampler) -> dict:
    """Run one sampler round in this thread and return the snapshot's data."""
    sampler._sample_round(time.monotonic())
    return sampler.latest.to_json()


def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met within the time allowed")
        time.sleep(0.01)


# -- opening ---------------------------------------------------------------------------------


def test_missing_library_is_a_reason_not_a_crash(install):
    """LIBRARY_NOT_FOUND at init becomes BackendUnavailable with NVML's own words."""
    # Given a host without libnvidia-ml
    install(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    # When the backend opens
    with pytest.raises(BackendUnavailable) as err:
        NvmlBackend().open()

    # Then the reason says what is missing
    assert err.value.reason == "NVML Shared Library Not Found"


def test_driver_not_loaded_is_a_reason(install):
    """DRIVER_NOT_LOADED at init becomes BackendUnavailable, and nothing stays initialised."""
    # Given a host with the library but no kernel driver
    fake = install(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    # When the backend opens
    with pytest.raises(BackendUnavailable) as err:
        NvmlBackend().open()

    # Then
    assert err.value.reason == "Driver Not Loaded"
    assert not fake.initialized


def test_sampler_over_missing_library_stays_up_unavailable(install):
    """A Sampler whose backend cannot open reports available=False with the reason."""
    # Given
    install(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    sampler = Sampler(NvmlBackend(), interval=0.1)

    # When
    sampler.start()

    # Then
    try:
        wait_for(lambda: not sampler.opening)
        assert sampler.available is False
        assert sampler.reason == "NVML Shared Library Not Found"
        assert sampler.latest.to_json()["gpus"] == []
        assert sampler.latest.to_json()["simulated"] is False
    finally:
        sampler.stop()


def test_zero_gpus(install):
    """A driver with no GPU: unavailable, says so, NVML handed back, and it looks again later."""
    # Given
    fake = install(gpus=[])
    sampler = Sampler(NvmlBackend(), interval=0.1, clock=FakeClock())

    # When
    sampler.start()

    # Then
    try:
        wait_for(lambda: not sampler.opening)
        assert sampler.device_count == 0
        assert sampler.available is False
        assert sampler.reason == "nvml: no GPU found"
        assert sampler.retry_in == 5.0
        assert sampler.latest.to_json()["gpus"] == []
        assert sampler._thread is not None and sampler._thread.is_alive()  # the one that looks
        assert not fake.initialized
    finally:
        sampler.stop()
    assert not fake.initialized


def test_static_facts_of_eight_gpus(install):
    """Open reads name, UUID, memory total, power limit (W) and max clocks of every GPU."""
    # Given
    gpus = [FakeGpu(name=f"NVIDIA H100 80GB HBM3 #{i}", power_limit_mw=700_000) for i in range(8)]
    fake = install(gpus=gpus)

    # When
    infos = NvmlBackend().open()

    # Then
    assert [i.index for i in infos] == list(range(8))
    assert [i.uuid for i in infos] == [g.uuid for g in fake.gpus]
    assert len({i.uuid for i in infos}) == 8
    assert infos[3].name == "NVIDIA H100 80GB HBM3 #3"
    assert infos[0].memory_total == 80 * GIB
    assert infos[0].power_limit == 700.0
    assert infos[0].max_clocks == {"sm": 1410, "memory": 1593}
    assert infos[0].mig_mode is False
    assert not any(i.lost for i in infos)


def test_versions(install):
    """Driver, NVML and CUDA versions in their usual spelling."""
    # Given
    install(cuda_driver_version=12040)
    backend = NvmlBackend()
    backend.open()

    # When
    versions = backend.versions()

    # Then
    assert versions == {"driver": "550.54.15", "nvml": "12.550.54.15", "cuda": "12.4"}


# -- readings in contract units ------------------------------------------------------------


def test_eight_gpus_every_field_in_contract_units(install):
    """Bytes for memory, W from mW for power, bytes/s from KB/s for PCIe, MHz for clocks."""
    # Given eight GPUs with distinct readings
    gpus = [
        FakeGpu(
            memory_used=(i + 1) * GIB,
            memory_reserved=512 * MIB,
            util_gpu=10 * i,
            util_memory=5 * i,
            temperature=40 + i,
            power_draw_mw=100_000 + 1_500 * i,
            power_limit_mw=400_000,
            fan=30 + i,
            clocks_sm=1000 + i,
            clocks_mem=1500 + i,
            pcie_tx_kb=1000 + i,
            pcie_rx_kb=2000 + i,
        )
        for i in range(8)
    ]
    install(gpus=gpus)
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()
    sampler.request_pcie()

    # When one round is taken
    data = sampled(sampler)

    # Then every row carries every field, converted
    rows = data["gpus"]
    assert len(rows) == 8
    assert data["simulated"] is False
    for i, row in enumerate(rows):
        assert row["index"] == i
        assert row["lost"] is False
        assert row["memory"] == {
            "total": 80 * GIB,
            "used": (i + 1) * GIB,
            "free": 80 * GIB - (i + 1) * GIB - 512 * MIB,
            "reserved": 512 * MIB,
        }
        assert row["utilization"] == {"gpu": 10 * i, "memory": 5 * i}
        assert row["temperature"] == 40 + i
        assert row["power"] == {"draw": 100.0 + 1.5 * i, "limit": 400.0}
        assert row["fan"] == 30 + i
        assert row["clocks"] == {
            "sm": 1000 + i, "memory": 1500 + i, "sm_max": 1410, "memory_max": 1593
        }  # fmt: skip
        assert row["pcie"] == {"tx": (1000 + i) * 1024, "rx": (2000 + i) * 1024}
        assert row["mig"] == {"enabled": False, "instances": []}
        assert row["processes"] == []
    sampler.stop()


def test_pcie_is_not_read_unless_asked(install):
    """PCIe throughput (20 ms a call on real drivers) is not read while nobody watches it."""
    # Given
    fake = install(gpus=[FakeGpu(pcie_tx_kb=5)])
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()

    # When
    data = sampled(sampler)

    # Then
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert data["gpus"][0]["pcie"] == {"tx": None, "rx": None}
    sampler.stop()


@pytest.mark.parametrize("error_set", ["not_supported", "no_permission"])
def test_unavailable_field_is_null_and_the_rest_is_read(install, error_set):
    """NotSupported / NoPermission on one query nulls that field only."""
    # Given a datacenter GPU without a fan and whose power reading is refused
    gpu = FakeGpu(fan=55, temperature=61, power_draw_mw=250_000, util_gpu=77)
    getattr(gpu, error_set).update({"nvmlDeviceGetFanSpeed", "nvmlDeviceGetPowerUsage"})
    install(gpus=[gpu])
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()

    # When
    row = sampled(sampler)["gpus"][0]

    # Then only those fields are null; the GPU is not lost
    assert row["fan"] is None
    assert row["power"] == {"draw": None, "limit": 400.0}
    assert row["temperature"] == 61
    assert row["utilization"]["gpu"] == 77
    assert row["memory"]["total"] == 80 * GIB
    assert row["lost"] is False
    sampler.stop()


def test_datacenter_gpu_has_no_fan(install):
    """The fake's default SXM board answers NotSupported for the fan: null, not an error."""
    # Given
    install(gpus=[FakeGpu()])
    backend = NvmlBackend()
    backend.open()

    # When
    slow = backend.read_slow(0)

    # Then
    assert slow.fan is None
    assert slow.temperature == 35


def test_unsupported_memory_info_gives_null_memory(install):
    """Memory info NotSupported leaves memory figures null without losing the GPU."""
    # Given
    install(gpus=[FakeGpu(not_supported={"nvmlDeviceGetMemoryInfo"}, util_gpu=3)])
    backend = NvmlBackend()
    backend.open()

    # When
    fast = backend.read_fast(0)

    # Then
    assert fast.memory.to_json() == {"total": None, "used": None, "free": None, "reserved": None}
    assert fast.utilization.to_json() == {"gpu": 3, "memory": 0}


# -- lost GPUs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["lost", "unknown"])
def test_backend_raises_gpu_lost(install, failure):
    """GPU_IS_LOST and UNKNOWN from any reading become GpuLost for that index."""
    # Given
    fake = install(gpus=[FakeGpu(), FakeGpu()])
    backend = NvmlBackend()
    backend.open()
    setattr(fake.gpus[1], failure, True)

    # When / Then
    for read in (backend.read_fast, backend.read_slow, backend.read_processes, backend.read_pcie):
        with pytest.raises(GpuLost) as err:
            read(1)
        assert err.value.index == 1
    assert backend.read_fast(0).memory.total == 80 * GIB


def test_gpu_lost_before_open_is_a_lost_row(install):
    """A GPU whose handle cannot be opened is a lost row; the others are read."""
    # Given
    install(gpus=[FakeGpu(), FakeGpu(lost=True), FakeGpu(temperature=50)])
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()

    # When
    rows = sampled(sampler)["gpus"]

    # Then
    assert [r["lost"] for r in rows] == [False, True, False]
    assert rows[1]["lost_reason"]
    assert rows[2]["temperature"] == 50
    sampler.stop()


@pytest.mark.parametrize("failure", ["lost", "unknown"])
def test_gpu_lost_mid_run(install, failure):
    """The running sampler marks the lost GPU, keeps running and keeps reading the others."""
    # Given a running sampler over three GPUs
    fake = install(gpus=[FakeGpu(util_gpu=1), FakeGpu(util_gpu=1), FakeGpu(util_gpu=1)])
    sampler = Sampler(NvmlBackend(), interval=0.05)
    sampler.start()
    try:
        wait_for(lambda: sampler.rounds >= 2)

        # When GPU 1 falls off the bus (or goes into an unknown state)
        setattr(fake.gpus[1], failure, True)
        wait_for(lambda: sampler.latest.to_json()["gpus"][1]["lost"])

        # Then the others keep reporting fresh readings and the worker keeps going
        fake.gpus[0].util_gpu = 42
        fake.gpus[2].util_gpu = 43
        rounds = sampler.rounds
        wait_for(lambda: sampler.rounds >= rounds + 3)
        rows = sampler.latest.to_json()["gpus"]
        assert [r["lost"] for r in rows] == [False, True, False]
        assert rows[1]["lost_reason"]
        assert rows[0]["utilization"]["gpu"] == 42
        assert rows[2]["utilization"]["gpu"] == 43
        assert sampler._thread is not None and sampler._thread.is_alive()
    finally:
        sampler.stop()


def test_lost_gpu_is_not_polled_until_its_retry(install):
    """Once lost, a GPU is left alone until its retry time instead of being hammered."""
    # Given a sampler whose GPU 1 was just lost
    fake = install(gpus=[FakeGpu(), FakeGpu()])
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()
    sampled(sampler)
    fake.gpus[1].lost = True
    assert sampled(sampler)["gpus"][1]["lost"] is True
    fake.reset_counters()

    # When more rounds run before the retry is due
    sampled(sampler)
    sampled(sampler)

    # Then only GPU 0 was asked: one memory and one utilization call per round
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 2
    sampler.stop()


# -- MIG ---------------------------------------------------------------------------------------


def mig_fake(install) -> FakeNvml:
    """One MIG GPU with two instances (slot 1 empty) and a process in each."""
    gpu = FakeGpu(
        mig_enabled=True,
        mig_devices=[
            FakeMig(memory_total=10 * GIB, memory_used=GIB, gpu_instance_id=1),
            None,
            FakeMig(
                memory_total=20 * GIB, memory_used=3 * GIB, gpu_instance_id=2, profile="2g.20gb"
            ),
        ],
        processes=[
            FakeProcess(pid=101, used_memory=GIB, gpu_instance_id=1, compute_instance_id=0),
            FakeProcess(pid=202, used_memory=3 * GIB, gpu_instance_id=2, compute_instance_id=0),
        ],
    )
    return install(gpus=[gpu, FakeGpu()])


def test_mig_instances_are_listed_with_uuids(install):
    """A MIG-enabled GPU lists its instances with UUIDs, ids and memory per instance."""
    # Given
    fake = mig_fake(install)
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()

    # When
    rows = sampled(sampler)["gpus"]

    # Then
    mig = rows[0]["mig"]
    assert mig["enabled"] is True
    migs = fake.gpus[0].mig_devices
    assert [i["index"] for i in mig["instances"]] == [0, 2]
    assert [i["uuid"] for i in mig["instances"]] == [migs[0].uuid, migs[2].uuid]
    assert all(i["uuid"].startswith("MIG-") for i in mig["instances"])
    assert [i["gpu_instance_id"] for i in mig["instances"]] == [1, 2]
    assert [i["compute_instance_id"] for i in mig["instances"]] == [0, 0]
    assert [i["memory_total"] for i in mig["instances"]] == [10 * GIB, 20 * GIB]
    assert mig["instances"][0]["memory"]["used"] == GIB
    assert mig["instances"][1]["memory"] == {
        "total": 20 * GIB, "used": 3 * GIB, "free": 17 * GIB, "reserved": 0
    }  # fmt: skip
    assert rows[1]["mig"] == {"enabled": False, "instances": []}
    sampler.stop()


def test_mig_memory_follows_the_instances(install):
    """Per-instance memory is read again every fast round."""
    # Given
    fake = mig_fake(install)
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()
    sampled(sampler)

    # When
    fake.gpus[0].mig_devices[2].memory_used = 5 * GIB
    instances = sampled(sampler)["gpus"][0]["mig"]["instances"]

    # Then
    assert instances[1]["memory"]["used"] == 5 * GIB


def test_processes_on_mig_instances_are_found(install):
    """Processes inside MIG instances are listed, each with the instance it runs in."""
    # Given
    mig_fake(install)
    backend = NvmlBackend()
    backend.open()

    # When
    rows = {p.pid: p for p in backend.read_processes(0)}

    # Then
    assert set(rows) == {101, 202}
    assert rows[101].used_memory == GIB
    assert rows[202].used_memory == 3 * GIB
    assert rows[101].mig == 0
    assert rows[202].mig == 2


def test_mig_processes_found_when_parent_lists_refuse(install):
    """Where the whole-GPU process list needs privileges, the MIG handles still find them."""
    # Given a parent handle whose process lists answer NoPermission (unprivileged, MIG mode)
    fake = mig_fake(install)
    backend = NvmlBackend()
    backend.open()
    real_v3 = fake.module.nvmlDeviceGetComputeRunningProcesses_v3
    parent = backend._facts.handles[0]

    def v3(handle):
        if handle is parent:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return real_v3(handle)

    backend._processes.readers["compute"] = [v3]

    # When
    rows = {p.pid: p for p in backend.read_processes(0)}

    # Then
    assert {pid: r.mig for pid, r in rows.items()} == {101: 0, 202: 2}


def test_mig_processes_come_from_one_parent_list_where_nvml_allows(install):
    """A privileged caller lists every instance's processes from the parent: no per-slot calls."""
    # Given a MIG GPU whose parent handle answers with the instance ids
    fake = mig_fake(install)
    backend = NvmlBackend()
    backend.open()
    backend.read_processes(0)
    fake.reset_counters()

    # When the processes are read again
    rows = {p.pid: p for p in backend.read_processes(0)}

    # Then one compute and one graphics list were read (the parent's), with each slot right
    assert {pid: r.mig for pid, r in rows.items()} == {101: 0, 202: 2}
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    assert fake.calls["nvmlDeviceGetGraphicsRunningProcesses_v3"] == 1


def test_mig_parent_refusal_is_remembered(install):
    """An unprivileged caller (NoPermission on the parent) reads each instance, and stops asking."""
    # Given a parent whose process lists need privileges
    fake = mig_fake(install)
    fake.gpus[0].mig_parent_lists_privileged = True
    backend = NvmlBackend()
    backend.open()
    first = {p.pid: p.mig for p in backend.read_processes(0)}
    fake.reset_counters()

    # When the processes are read again
    again = {p.pid: p.mig for p in backend.read_processes(0)}

    # Then both rounds place each process; the second asks the two instances only
    assert first == again == {101: 0, 202: 2}
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 2


def test_mig_empty_parent_list_is_checked_on_the_instances(install):
    """An empty parent list proves nothing until the parent has once named instances."""
    # Given a MIG GPU with no processes yet
    fake = mig_fake(install)
    procs, fake.gpus[0].processes = fake.gpus[0].processes, []
    backend = NvmlBackend()
    backend.open()
    fake.reset_counters()

    # When it is read empty, then the processes start and it is read twice more
    empty = backend.read_processes(0)
    asked_while_empty = fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"]
    fake.gpus[0].processes = procs
    backend.read_processes(0)
    fake.reset_counters()
    rows = {p.pid: p.mig for p in backend.read_processes(0)}

    # Then the empty round asked the parent and both instances; once the parent named the
    # instances, it alone is asked
    assert empty == ()
    assert asked_while_empty == 3
    assert rows == {101: 0, 202: 2}
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


# -- NVLink ------------------------------------------------------------------------------------


class Clock:
    """Seconds the fake's field-value timestamps are taken from."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_nvlink_links_active_and_throughput_from_field_values(install):
    """Links counted at open; per reading: active links and bytes/s from the KiB counters."""
    # Given a GPU with 3 links (one down) and a GPU without NVLink
    clock = Clock()
    links = [FakeLink(tx_kib=1000, rx_kib=2000), FakeLink(tx_kib=500, rx_kib=0), FakeLink(active=False)]
    fake = install(gpus=[FakeGpu(nvlink=links), FakeGpu()], timer=clock)
    backend = NvmlBackend()
    infos = backend.open()

    # When the interconnect is read twice, 2 s apart, after 4 MiB went out and 2 MiB came in
    first = backend.read_pcie(0).nvlink.to_json()
    links[0].tx_kib += 4096
    links[1].rx_kib += 2048
    clock.now += 2
    fake.reset_counters()
    second = backend.read_pcie(0).nvlink.to_json()

    # Then the first reading has the counters but no rate yet, the second the rates
    assert infos[0].nvlink_links == 3 and infos[0].nvlink_reason is None
    assert first["links"] == 3 and first["active"] == 2
    assert first["tx"] is None and first["tx_total"] == 1500 * 1024
    assert second["tx"] == 2 * 2**20 and second["rx"] == 2**20
    assert second["rx_total"] == (2000 + 2048) * 1024
    # And one field-value call per reading, whatever the number of links
    assert fake.calls["nvmlDeviceGetFieldValues"] == 1
    # And the GPU without NVLink says so, and its reading has no NVLink part
    assert infos[1].nvlink_links == 0 and infos[1].nvlink_reason == "this GPU has no NVLink"
    assert backend.read_pcie(1).nvlink is None


def test_nvlink_shows_while_the_interconnect_is_watched(install):
    """In a snapshot: NVLink rates while someone watches, the reason where there is none."""
    # Given
    install(gpus=[FakeGpu(nvlink=[FakeLink(), FakeLink()]), FakeGpu()])
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()
    assert sampled(sampler)["gpus"][0]["nvlink"]["active"] is None  # nobody watches

    # When a client watches the interconnect
    release = sampler.watch_pcie()
    rows = sampled(sampler)["gpus"]
    release()

    # Then
    assert rows[0]["nvlink"]["links"] == 2 and rows[0]["nvlink"]["active"] == 2
    assert rows[1]["nvlink"] == {
        "links": 0, "active": None, "tx": None, "rx": None, "tx_total": None, "rx_total": None,
        "reason": "this GPU has no NVLink",
    }  # fmt: skip
    sampler.stop()


# -- versioned symbols -------------------------------------------------------------------------


def test_missing_v3_process_lists_fall_back_to_v2_once(install):
    """Without the _v3 process lists, _v2 answers; the probe is not repeated next round."""
    # Given an older driver and two GPUs with processes
    missing = {
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
    }
    gpus = [FakeGpu(processes=[FakeProcess(pid=10 + i, used_memory=GIB)]) for i in range(2)]
    fake = install(gpus=gpus, missing_symbols=missing)
    backend = NvmlBackend()
    backend.open()

    # When two rounds read the process lists
    first = [backend.read_processes(i) for i in range(2)]
    v3_calls = fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"]
    second = [backend.read_processes(i) for i in range(2)]

    # Then v3 was probed once in all, v2 answered every time
    assert [[p.pid for p in rows] for rows in first] == [[10], [11]]
    assert first == second
    assert v3_calls == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    assert fake.calls["nvmlDeviceGetGraphicsRunningProcesses_v3"] == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 4
    assert fake.calls["nvmlDeviceGetGraphicsRunningProcesses_v2"] == 4


def test_no_process_list_symbol_at_all_is_an_empty_list(install):
    """Without v3 and v2, the plain name's version mismatch error means "no list", once."""
    # Given a driver with neither versioned symbol (the plain binding then raises
    # NVMLLibraryMismatchError, which is not an NVMLError)
    missing = {
        f"nvmlDeviceGet{kind}RunningProcesses_{v}"
        for kind in ("Compute", "Graphics")
        for v in ("v2", "v3")
    }
    gpu = FakeGpu(processes=[FakeProcess(pid=7, used_memory=GIB)])
    fake = install(gpus=[gpu], missing_symbols=missing)
    backend = NvmlBackend()
    backend.open()

    # When two rounds read the process lists
    first = backend.read_processes(0)
    before = fake.calls.copy()
    second = backend.read_processes(0)

    # Then no error, no rows, and the second round asks only the remembered plain names
    assert first == second == ()
    assert fake.calls - before == {
        "nvmlDeviceGetComputeRunningProcesses": 1,
        "nvmlDeviceGetGraphicsRunningProcesses": 1,
        "nvmlDeviceGetProcessUtilization": 1,
    }


def test_missing_memory_v2_falls_back_to_v1_without_error(install, monkeypatch):
    """Without memory info v2, v1 answers (reserved unknown) and v2 is not asked again."""
    # Given
    fake = install(
        gpus=[FakeGpu(memory_used=GIB, memory_reserved=512 * MIB), FakeGpu()],
        missing_symbols={"nvmlDeviceGetMemoryInfo_v2"},
    )
    versions_asked = []
    memory_info = fake.module.nvmlDeviceGetMemoryInfo

    def spy(handle, version=None):
        versions_asked.append(version)
        return memory_info(handle, version=version)

    monkeypatch.setattr(fake.module, "nvmlDeviceGetMemoryInfo", spy)
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()  # reads memory totals: the v2 probe happens here

    # When two rounds run
    asked_at_open = list(versions_asked)
    sampled(sampler)
    row = sampled(sampler)["gpus"][0]

    # Then v1 figures (used counts the driver's reserve), no error, one v2 probe in all
    assert row["memory"] == {
        "total": 80 * GIB,
        "used": GIB + 512 * MIB,
        "free": 80 * GIB - GIB - 512 * MIB,
        "reserved": None,
    }
    assert row["lost"] is False
    assert asked_at_open[0] == pynvml.nvmlMemory_v2
    assert sum(v is not None for v in versions_asked) == 1
    assert versions_asked[-4:] == [None, None, None, None]
    sampler.stop()


# -- processes ---------------------------------------------------------------------------------


def test_unknown_process_memory_is_null_not_zero(install):
    """usedGpuMemory None (NVML_VALUE_NOT_AVAILABLE, e.g. under WDDM or in containers) -> null."""
    # Given
    install(gpus=[FakeGpu(processes=[FakeProcess(pid=5, used_memory=None), FakeProcess(pid=6)])])
    backend = NvmlBackend()
    backend.open()

    # When
    rows = {p.pid: p for p in backend.read_processes(0)}

    # Then
    assert rows[5].used_memory is None
    assert rows[6].used_memory == 0


def test_pid_in_compute_and_graphics_lists_is_one_row(install):
    """A PID in both lists is one row, typed compute+graphics, its memory counted once."""
    # Given
    gpu = FakeGpu(
        processes=[FakeProcess(pid=9, used_memory=2 * GIB), FakeProcess(pid=10, used_memory=GIB)],
        graphics_processes=[
            FakeProcess(pid=9, used_memory=2 * GIB), FakeProcess(pid=11, used_memory=MIB)
        ],
    )
    install(gpus=[gpu])
    backend = NvmlBackend()
    backend.open()

    # When
    rows = backend.read_processes(0)

    # Then
    assert sorted(r.pid for r in rows) == [9, 10, 11]
    by_pid = {r.pid: r for r in rows}
    assert by_pid[9].type == "compute+graphics"
    assert by_pid[9].used_memory == 2 * GIB
    assert by_pid[10].type == "compute"
    assert by_pid[11].type == "graphics"


def test_per_process_utilization_when_supported(install):
    """Per-process SM and memory utilization come with each row when NVML has samples."""
    # Given
    gpu = FakeGpu(
        processes=[FakeProcess(pid=21, used_memory=GIB), FakeProcess(pid=22, used_memory=GIB)],
        process_utilization=[(21, 80, 35)],
    )
    install(gpus=[gpu])
    backend = NvmlBackend()
    backend.open()

    # When
    rows = {p.pid: p for p in backend.read_processes(0)}

    # Then
    assert rows[21].utilization.to_json() == {"sm": 80, "memory": 35}
    assert rows[22].utilization is None


def test_per_process_utilization_not_supported(install):
    """NotSupported per-process utilization leaves utilization null and the list intact."""
    # Given
    gpu = FakeGpu(
        processes=[FakeProcess(pid=21, used_memory=GIB)],
        process_utilization=[(21, 80, 35)],
        not_supported={"nvmlDeviceGetProcessUtilization"},
    )
    install(gpus=[gpu])
    backend = NvmlBackend()
    backend.open()

    # When
    rows = backend.read_processes(0)

    # Then
    assert [(r.pid, r.used_memory, r.utilization) for r in rows] == [(21, GIB, None)]


def test_processes_in_the_sampler_snapshot(install):
    """The snapshot's process rows carry the contract fields, attribution still empty."""
    # Given
    install(gpus=[FakeGpu(processes=[FakeProcess(pid=31, used_memory=GIB)])])
    sampler = Sampler(NvmlBackend(), interval=0.1)
    sampler.open()

    # When
    processes = sampled(sampler)["gpus"][0]["processes"]

    # Then
    assert len(processes) == 1
    assert processes[0]["pid"] == 31
    assert processes[0]["used_memory"] == GIB
    assert processes[0]["kernel_id"] is None
    assert processes[0]["notebook"] is None
    sampler.stop()


# -- closing -----------------------------------------------------------------------------------


def test_close_shuts_nvml_down_and_is_safe_twice(install):
    """close() calls nvmlShutdown once, and again is harmless."""
    # Given
    fake = install()
    backend = NvmlBackend()
    backend.open()
    assert fake.initialized

    # When
    backend.close()
    backend.close()

    # Then
    assert fake.calls["nvmlShutdown"] == 1
    assert not fake.initialized


def test_close_before_open_is_harmless(install):
    """close() on a backend that never opened does nothing."""
    # Given
    fake = install()

    # When
    NvmlBackend().close()

    # Then
    assert fake.calls["nvmlShutdown"] == 0


def test_sampler_stop_shuts_nvml_down(install):
    """Stopping a running sampler stops its worker and shuts NVML down."""
    # Given
    fake = install(gpus=[FakeGpu(), FakeGpu()])
    sampler = Sampler(NvmlBackend(), interval=0.05)
    sampler.start()
    wait_for(lambda: sampler.rounds >= 1)

    # When
    sampler.stop()

    # Then
    assert sampler._thread is None
    assert fake.calls["nvmlShutdown"] == 1
    assert not fake.initialized


# -- faults: any error is a null with a reason, and a retry -----------------------------------


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


def rounds_from(sampler: Sampler, start: float, count: int) -> dict:
    """Run ``count`` rounds one simulated second apart; return the last snapshot's data."""
    sampler._tokens_at = start
    for tick in range(count):
        sampler._sample_round(start + tick)
    return sampler.latest.to_json()


def every_second(**kwargs) -> Sampler:
    """A sampler over NVML whose every group is due every round, with budget to spare."""
    return Sampler(
        NvmlBackend(),
        interval=1.0,
        slow_interval=1.0,
        process_interval=1.0,
        budget=1.0,
        **kwargs,
    )


# (call, error, what the reason says): the library or the device count failing
OPEN_FAULTS = {
    "init-timeout": ("nvmlInit", pynvml.NVML_ERROR_TIMEOUT, "Timeout"),
    "init-unknown": ("nvmlInit", pynvml.NVML_ERROR_UNKNOWN, "Unknown Error"),
    "count-timeout": ("nvmlDeviceGetCount", pynvml.NVML_ERROR_TIMEOUT, "Timeout"),
    "count-uninitialized": ("nvmlDeviceGetCount", pynvml.NVML_ERROR_UNINITIALIZED, "Uninitialized"),
}  # fmt: skip


@pytest.mark.parametrize(("call", "error", "said"), OPEN_FAULTS.values(), ids=OPEN_FAULTS.keys())
def test_any_error_at_open_leaves_the_sampler_up_with_a_reason(install, call, error, said):
    """The library or the device count failing at open: start() returns, unavailable, why."""
    # Given two GPUs whose driver fails one call of the open
    fake = install(gpus=[FakeGpu(), FakeGpu()])
    fake.inject(call, error)
    sampler = Sampler(NvmlBackend(), interval=0.1, clock=FakeClock())

    # When the sampler starts (as initialize_settings starts it)
    sampler.start()

    # Then it is up, unavailable, says why and when it tries again, and NVML is handed back
    try:
        wait_for(lambda: not sampler.opening)
        assert sampler.available is False
        assert said in sampler.reason
        assert sampler.retry_in == 5.0
        assert sampler.latest.to_json()["gpus"] == []
        assert sampler.devices == []
        assert not fake.initialized
        assert sampler._thread is not None and sampler._thread.is_alive()  # the one that retries
    finally:
        sampler.stop()


def test_open_succeeds_on_a_later_retry(install):
    """A driver that times out at start is tried again when due, and then GPUs appear."""
    # Given a sampler whose first open timed out
    fake = install(gpus=[FakeGpu(util_gpu=7), FakeGpu()])
    fake.inject("nvmlInit", pynvml.NVML_ERROR_TIMEOUT)
    clock = FakeClock()
    sampler = Sampler(NvmlBackend(), interval=1.0, clock=clock)
    assert sampler.open() is False
    inits = fake.calls["nvmlInit"]

    # When the retry is not due yet, then due but still failing, then due with the fault gone
    clock.advance(4.9)
    early = sampler.retry_open()
    asked_early = fake.calls["nvmlInit"] - inits
    clock.advance(0.1)
    failing = sampler.retry_open()
    retry_after_second_failure = sampler.retry_in
    fake.clear()
    clock.advance(10.0)
    opened = sampler.retry_open()

    # Then nothing was asked before the retry was due, the delay doubled, and GPUs appeared
    assert (early, asked_early) == (False, 0)
    assert failing is False
    assert retry_after_second_failure == 10.0
    assert opened is True
    assert sampler.available is True
    assert sampler.reason is None
    assert sampler.retry_in is None
    assert [d.uuid for d in sampler.devices] == [g.uuid for g in fake.gpus]
    assert len(sampler.latest.to_json()["gpus"]) == 2
    assert rounds_from(sampler, 2000.0, 1)["gpus"][0]["utilization"]["gpu"] == 7
    sampler.stop()
    assert not fake.initialized


def test_open_retries_back_off_to_five_minutes(install):
    """A backend that keeps failing is tried after 5, 10, 20 ... seconds, at most 300."""
    # Given a driver that never starts
    fake = install()
    fake.inject("nvmlInit", pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    clock = FakeClock()
    sampler = Sampler(NvmlBackend(), clock=clock)
    sampler.open()

    # When every retry is made as soon as it is due
    delays = [sampler.retry_in]
    for _ in range(8):
        clock.advance(sampler.retry_in)
        sampler.retry_open()
        delays.append(sampler.retry_in)

    # Then
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert fake.calls["nvmlInit"] == 9
    assert sampler.reason == "Driver Not Loaded"


def test_the_worker_thread_retries_the_open(install, monkeypatch):
    """The running sampler's own thread opens the backend once the driver answers."""
    # Given a running sampler whose open failed, retrying every few milliseconds
    monkeypatch.setattr("jupyter_tfgpu.server.sampling.opening.OPEN_RETRY_SECONDS", 0.01)
    monkeypatch.setattr("jupyter_tfgpu.server.sampling.opening.OPEN_RETRY_MAX_SECONDS", 0.01)
    fake = install(gpus=[FakeGpu(util_gpu=5)])
    fake.inject("nvmlDeviceGetCount", pynvml.NVML_ERROR_TIMEOUT)
    sampler = Sampler(NvmlBackend(), interval=0.05)
    sampler.start()
    try:
        assert sampler.available is False
        wait_for(lambda: fake.calls["nvmlInit"] >= 3)

        # When the driver answers again
        fake.clear()

        # Then the same thread opens it and samples
        wait_for(lambda: sampler.rounds >= 2)
        assert sampler.available is True
        assert sampler.latest.to_json()["gpus"][0]["utilization"]["gpu"] == 5
    finally:
        sampler.stop()
    assert not fake.initialized


@pytest.mark.parametrize(
    ("warn", "level"), [(True, "WARNING"), (False, "INFO")], ids=["nvml-named", "auto"]
)
def test_unavailable_backend_is_logged_once_per_reason(install, caplog, warn, level):
    """A backend the admin named is a warning when missing; auto on a GPU-less host is info."""
    # Given a host without libnvidia-ml
    install(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    clock = FakeClock()
    sampler = Sampler(NvmlBackend(), warn_unavailable=warn, clock=clock)

    # When it is opened and retried twice
    with caplog.at_level("DEBUG", logger="jupyter_tfgpu.server.sampling.sampler"):
        sampler.open()
        for _ in range(2):
            clock.advance(sampler.retry_in)
            sampler.retry_open()

    # Then one line at the expected level, which names the backend and the reason
    lines = [r for r in caplog.records if r.levelname != "DEBUG"]
    assert [r.levelname for r in lines] == [level]
    assert "nvml" in lines[0].getMessage()
    assert "NVML Shared Library Not Found" in lines[0].getMessage()


MID_RUN_FAULTS = {
    "timeout": pynvml.NVML_ERROR_TIMEOUT,
    "insufficient-resources": pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES,
    "driver-not-loaded": pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    "uninitialized": pynvml.NVML_ERROR_UNINITIALIZED,
    "binding-bug": RuntimeError("binding bug"),
}


@pytest.mark.parametrize("error", MID_RUN_FAULTS.values(), ids=MID_RUN_FAULTS.keys())
def test_a_failing_field_mid_run_is_null_with_a_reason(install, error):
    """A query failing on one GPU nulls that field with a reason; all else is read; it recovers."""
    # Given two GPUs sampled once
    fake = install(
        gpus=[FakeGpu(temperature=40, util_gpu=10), FakeGpu(temperature=50, util_gpu=20)]
    )
    sampler = every_second()
    sampler.open()
    rounds_from(sampler, 100.0, 1)

    # When GPU 1's temperature and utilization queries fail for one round
    fake.inject("nvmlDeviceGetTemperature", error, times=1, gpu=1)
    fake.inject("nvmlDeviceGetUtilizationRates", error, times=1, gpu=1)
    failed = rounds_from(sampler, 200.0, 1)["gpus"]
    recovered = rounds_from(sampler, 300.0, 1)["gpus"]

    # Then only those fields were null, each with the call and the reason
    assert failed[1]["temperature"] is None
    assert failed[1]["utilization"] == {"gpu": None, "memory": None}
    assert set(failed[1]["errors"]) == {"temperature", "utilization"}
    assert failed[1]["errors"]["temperature"].startswith("nvmlDeviceGetTemperature: ")
    assert failed[1]["lost"] is False
    assert failed[1]["power"]["draw"] == 60.0
    assert failed[1]["memory"]["total"] == 80 * GIB
    assert (failed[0]["temperature"], failed[0]["utilization"]["gpu"], failed[0]["errors"]) == (
        40, 10, {}
    )  # fmt: skip
    # And the next round read them again
    assert (recovered[1]["temperature"], recovered[1]["utilization"]["gpu"]) == (50, 20)
    assert recovered[1]["errors"] == {}
    assert fake.faults_raised == 2


def test_a_failing_process_list_is_the_last_one_marked_stale(install):
    """A process list that times out keeps the last list, marked stale, with the reason."""
    # Given two GPUs with one process each
    gpus = [FakeGpu(processes=[FakeProcess(pid=10 + i, used_memory=GIB)]) for i in range(2)]
    fake = install(gpus=gpus)
    sampler = every_second()
    sampler.open()
    rounds_from(sampler, 100.0, 1)

    # When GPU 0's compute process list times out once
    fake.inject("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_TIMEOUT, 1, gpu=0)
    failed = rounds_from(sampler, 101.0, 1)["gpus"]
    recovered = rounds_from(sampler, 102.0, 1)["gpus"]

    # Then
    assert [p["pid"] for p in failed[0]["processes"]] == [10]
    assert failed[0]["processes_stale"] == "NVMLError_Timeout: Timeout"
    assert "Timeout" in failed[0]["errors"]["processes"]
    assert [p["pid"] for p in failed[1]["processes"]] == [11]
    assert [p["pid"] for p in recovered[0]["processes"]] == [10]
    assert recovered[0]["processes_stale"] is None
    assert recovered[0]["errors"] == {}


def test_a_failing_field_is_logged_once(install, caplog):
    """A field failing every round is one warning, not one per round."""
    # Given a temperature sensor that keeps timing out
    fake = install(gpus=[FakeGpu()])
    fake.inject("nvmlDeviceGetTemperature", pynvml.NVML_ERROR_TIMEOUT)
    sampler = every_second()
    sampler.open()

    # When five rounds run
    with caplog.at_level("WARNING", logger="jupyter_tfgpu.server.sampling.sampler"):
        row = rounds_from(sampler, 100.0, 5)["gpus"][0]

    # Then one line, and the field still says why
    assert [r.getMessage() for r in caplog.records if "temperature" in r.getMessage()] == [
        "GPU 0 temperature: nvmlDeviceGetTemperature: Timeout (null until it answers again)"
    ]
    assert row["errors"] == {"temperature": "nvmlDeviceGetTemperature: Timeout"}

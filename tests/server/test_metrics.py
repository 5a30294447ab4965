"""/metrics made to be aggregated across servers: who, where, how much, for how long."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.server.metrics import SERIES
from jupyter_tfgpu.server.kernels.usage import MAX_STEP_SECONDS, KernelUsage
from tests.kernel_helpers import poll, run_code, start_session

GIB = 2**30


@pytest.fixture
def jp_server_config(jp_server_config, monkeypatch):
    """A server spawned by a hub for user alice's server "gpu"."""
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    monkeypatch.setenv("JUPYTERHUB_SERVER_NAME", "gpu")
    return jp_server_config


async def scrape(jp_fetch) -> dict[str, list]:
    """Sample name -> its samples, from a real scrape."""
    text = (await jp_fetch("metrics")).body.decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def of_kernel(samples: dict[str, list], name: str, kernel_id: str) -> list:
    return [s for s in samples.get(name, []) if s.labels.get("kernel_id") == kernel_id]


async def test_kernel_series_say_who_where_how_much_and_how_long(jp_fetch, jp_serverapp, jp_root_dir):
    """Per-kernel series carry user/server/hostname/notebook/kernel_id; counters grow; a stopped
    kernel's series disappear."""
    # Given a notebook with a 1 GiB cap whose kernel holds GPU memory
    (jp_root_dir / "lab").mkdir()
    await jp_fetch("tfgpu", "api", "policies", "lab", "train.ipynb", method="PUT", body='{"memory_limit_mb": 1024}')
    session = await start_session(jp_fetch, "lab/train.ipynb")
    kernel_id = session["kernel"]["id"]
    await run_code(jp_serverapp, kernel_id, "ready = True")  # idle from then on

    async def counted():
        samples = await scrape(jp_fetch)
        held = of_kernel(samples, "tfgpu_kernel_gpu_memory_byte_seconds_total", kernel_id)
        idle = of_kernel(samples, "tfgpu_kernel_idle_seconds", kernel_id)
        return samples if held and held[0].value > 0 and idle else None

    # When it is scraped
    first = await poll(counted, timeout=60)

    # Then every per-kernel series names the same who and where
    who = {"user": "alice", "server": "gpu", "hostname": socket.gethostname(), "notebook": "lab/train.ipynb", "kernel_id": kernel_id}
    for name in (
        "tfgpu_kernel_gpu_memory_bytes",
        "tfgpu_kernel_memory_limit_bytes",
        "tfgpu_kernel_idle_seconds",
        "tfgpu_kernel_gpu_memory_byte_seconds_total",
        "tfgpu_kernel_gpu_busy_seconds_total",
    ):
        (sample, *_) = of_kernel(first, name, kernel_id)
        assert {k: sample.labels[k] for k in who} == who, name
    assert of_kernel(first, "tfgpu_kernel_memory_limit_bytes", kernel_id)[0].value == GIB
    memory = of_kernel(first, "tfgpu_kernel_gpu_memory_bytes", kernel_id)[0]
    assert memory.labels["gpu"] == "0" and memory.labels["UUID"].startswith("GPU-")
    # And the server says who runs it
    (info,) = first["tfgpu_server_info"]
    assert info.labels["user"] == "alice" and info.labels["server"] == "gpu" and info.labels["version"]
    # And GPU series join with dcgm-exporter's labels
    gpu = first["tfgpu_gpu_memory_total_bytes"][0]
    assert set(gpu.labels) == {"gpu", "UUID", "modelName", "Hostname"}
    assert gpu.labels["Hostname"] == socket.gethostname()

    # When time passes, the memory-seconds counter grows
    before = of_kernel(first, "tfgpu_kernel_gpu_memory_byte_seconds_total", kernel_id)[0].value

    async def grown():
        samples = await scrape(jp_fetch)
        held = of_kernel(samples, "tfgpu_kernel_gpu_memory_byte_seconds_total", kernel_id)
        return held and held[0].value > before

    await poll(grown, timeout=30)

    # When the kernel stops, its series are gone
    await jp_fetch("api", "sessions", session["id"], method="DELETE")

    async def gone():
        samples = await scrape(jp_fetch)
        return not any(of_kernel(samples, s.name, kernel_id) for s in SERIES)

    assert await poll(gone, timeout=30)


async def test_placement_decisions_are_counted(jp_fetch):
    """A kernel whose policy says devices "auto" adds one decision with its outcome."""
    # Given / When a notebook with devices "auto" starts its kernel
    await jp_fetch("tfgpu", "api", "policies", "auto.ipynb", method="PUT", body='{"devices": "auto"}')
    await start_session(jp_fetch, "auto.ipynb")

    # Then
    samples = await scrape(jp_fetch)
    placed = [s for s in samples["tfgpu_placement_decisions_total"] if s.labels["outcome"] == "placed"]
    assert placed and placed[0].value >= 1 and placed[0].labels["strategy"] == "most_free_memory"


def _gpu(index: int, processes: list[dict]) -> GpuReading:
    return GpuReading.from_json({"index": index, "uuid": f"GPU-{index}", "processes": processes})


def test_usage_counts_memory_seconds_and_busy_seconds_per_kernel_and_gpu():
    """Each snapshot adds the time since the last at its figures; a stopped kernel is dropped."""
    # Given a kernel holding 1 GiB on GPU 0 with its process at 50% SM, another kernel idle
    usage = KernelUsage()
    procs = [{"pid": 7, "kernel_id": "k1", "utilization": {"sm": 50, "memory": 10}}]
    rows = [
        {"kernel_id": "k1", "notebook": "a.ipynb", "per_gpu": [{"index": 0, "uuid": "GPU-0", "used_memory": GIB}]},
        {"kernel_id": "k2", "notebook": "b.ipynb", "per_gpu": []},
    ]

    # When three snapshots come 2 s apart, then one after a long stall
    for t in (100.0, 102.0, 104.0):
        usage.add(t, [_gpu(0, procs)], rows)
    usage.add(104.0 + 3600, [_gpu(0, procs)], rows)

    # Then 4 s + the capped step at 1 GiB, and half of that busy
    totals = usage.totals()
    assert totals[("k1", 0)].memory_byte_seconds == (4 + MAX_STEP_SECONDS) * GIB
    assert totals[("k1", 0)].busy_seconds == (4 + MAX_STEP_SECONDS) / 2
    assert totals[("k1", 0)].uuid == "GPU-0" and totals[("k1", 0)].notebook == "a.ipynb"
    # And when k1 stops, its totals go
    usage.add(5000.0, [_gpu(0, [])], rows[1:])
    assert ("k1", 0) not in usage.totals()


def test_series_follow_prometheus_naming():
    """Base units, _total on counters, a unit suffix on every gauge but info, booleans and counts."""
    for series in SERIES:
        assert series.name.startswith("tfgpu_")
        assert (series.kind == "counter") == series.name.endswith("_total"), series.name
        assert "percent" not in series.name and "_mb" not in series.name
        if series.kind == "gauge" and not series.name.endswith(("_info", "_lost", "_links", "_links_active")):
            assert series.name.endswith(("_bytes", "_seconds", "_ratio", "_celsius", "_watts")), series.name

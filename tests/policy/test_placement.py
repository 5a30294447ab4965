"""Automatic GPU placement (`devices: "auto"`): strategies, exclusions, kernels starting at once."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.policy.placement import Placement
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.kernel_helpers import start_session

GiB = 2**30


def gpu(index, free_gib=16, kernels=(), lost=False):
    """A snapshot reading of a 16 GiB GPU."""
    return GpuReading.from_json({
        "index": index,
        "uuid": f"GPU-{index}",
        "lost": lost,
        "mig": None,
        "memory": {"total": 16 * GiB, "free": free_gib * GiB, "used": (16 - free_gib) * GiB},
        "processes": [{"pid": 100 + n, "kernel_id": k, "mig": None} for n, k in enumerate(kernels)],
    })


def test_kernels_placed_together_spread_over_equal_gpus():
    """Three picks from one unchanged snapshot land on three GPUs (reservations count)."""
    # Given three equal GPUs and a snapshot that will not change meanwhile
    placement = Placement(lambda: [gpu(0), gpu(1), gpu(2)])
    # When three kernels are placed one after the other
    chosen = [placement.choose(f"k{n}", 1, None)["chosen"] for n in range(3)]
    # Then each got its own GPU
    assert sorted(c[0] for c in chosen) == ["GPU-0", "GPU-1", "GPU-2"]


def test_most_free_memory_prefers_the_emptiest_gpu():
    """The default strategy picks the GPU with the most free memory."""
    placement = Placement(lambda: [gpu(0, free_gib=2), gpu(1, free_gib=12), gpu(2, free_gib=8)])
    assert placement.choose("k", 2, None)["chosen"] == ["GPU-1", "GPU-2"]


def test_a_reserved_limit_counts_against_free_memory():
    """A kernel placed with a memory limit makes its GPU look that much fuller."""
    placement = Placement(lambda: [gpu(0, free_gib=10), gpu(1, free_gib=8)])
    assert placement.choose("a", 1, 4096)["chosen"] == ["GPU-0"]  # 10 GiB free -> 6 left
    assert placement.choose("b", 1, 4096)["chosen"] == ["GPU-1"]  # 8 GiB beats 6 GiB


def test_fewest_kernels_and_pack():
    """fewest_kernels spreads kernels; pack fills the fullest GPU that still has room."""
    snapshot = [gpu(0, free_gib=10, kernels=["x"]), gpu(1, free_gib=4, kernels=["y", "z"]), gpu(2, free_gib=16)]
    assert Placement(lambda: snapshot, "fewest_kernels").choose("k", 1, None)["chosen"] == ["GPU-2"]
    assert Placement(lambda: snapshot, "pack").choose("k", 1, 2048)["chosen"] == ["GPU-1"]
    # a limit bigger than the fullest GPU's free memory moves on to the next fullest
    assert Placement(lambda: snapshot, "pack").choose("k", 1, 8192)["chosen"] == ["GPU-0"]


def test_lost_and_excluded_gpus_are_never_chosen():
    """A lost GPU and one outside allowed_devices are skipped, even if emptiest."""
    placement = Placement(lambda: [gpu(0, free_gib=1), gpu(1, lost=True), gpu(2)])
    result = placement.choose("k", 2, None, allowed={"GPU-0", "GPU-1"})
    assert result["chosen"] == ["GPU-0"]
    assert result["reason"] == "asked for 2 GPU(s), 1 available"


def test_a_released_kernel_frees_its_reservation():
    """After a kernel goes away its GPU counts as empty again."""
    placement = Placement(lambda: [gpu(0), gpu(1)])
    assert placement.choose("a", 1, None)["chosen"] == ["GPU-0"]
    placement.release("a")
    assert placement.choose("b", 1, None)["chosen"] == ["GPU-0"]


STRATEGIES = ("most_free_memory", "fewest_kernels", "pack")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kernels_without_a_limit_started_together_spread_over_unequal_gpus(strategy):
    """Two kernels with no limit, placed from one snapshot, get two GPUs whatever the strategy."""
    # Given two empty GPUs, one with more free memory, and a snapshot that will not change
    placement = Placement(lambda: [gpu(0, free_gib=12), gpu(1, free_gib=10)], strategy)
    # When two kernels without a memory limit are placed one after the other
    first = placement.choose("a", 1, None)["chosen"]
    second = placement.choose("b", 1, None)["chosen"]
    # Then the second does not stack on the GPU the first may take whole
    assert {first[0], second[0]} == {"GPU-0", "GPU-1"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_more_kernels_without_a_limit_than_gpus_are_spread_evenly(strategy):
    """Four kernels with no limit on two GPUs: two each, not four on one."""
    # Given two empty GPUs of unequal free memory
    placement = Placement(lambda: [gpu(0, free_gib=12), gpu(1, free_gib=10)], strategy)
    # When four kernels without a limit are placed
    chosen = [placement.choose(f"k{n}", 1, None)["chosen"][0] for n in range(4)]
    # Then each GPU got two
    assert sorted(chosen) == ["GPU-0", "GPU-0", "GPU-1", "GPU-1"]


def test_most_free_memory_places_a_limited_kernel_beside_an_unlimited_one():
    """A GPU reserved by a kernel without a limit counts as full for the next pick."""
    # Given a kernel without a limit placed on the emptiest GPU
    placement = Placement(lambda: [gpu(0, free_gib=12), gpu(1, free_gib=4)])
    assert placement.choose("big", 1, None)["chosen"] == ["GPU-0"]
    # When a kernel limited to 1 GiB is placed
    result = placement.choose("small", 1, 1024)
    # Then it goes to the other GPU, though that one has less free memory in the snapshot
    assert result["chosen"] == ["GPU-1"]


def test_an_unlimited_kernel_seen_on_its_gpu_still_claims_it():
    """A kernel without a limit may take its GPU whole later, though the snapshot shows it using
    little yet: once the sampler sees it there, the next pick still counts that GPU as full."""
    # Given a kernel without a limit placed on the larger GPU
    snapshot = [gpu(0, free_gib=16), gpu(1, free_gib=10)]
    placement = Placement(lambda: snapshot, "most_free_memory")
    assert placement.choose("big", 1, None)["chosen"] == ["GPU-0"]
    # When the sampler shows it on that GPU, holding 1 GiB so far
    snapshot[0] = gpu(0, free_gib=15, kernels=["big"])
    # Then another kernel without a limit goes to the other GPU
    assert placement.choose("next", 1, None)["chosen"] == ["GPU-1"]
    # And once the first is gone, its GPU is free for the next
    placement.release("big")
    snapshot[0] = gpu(0, free_gib=16)
    assert placement.choose("third", 1, None)["chosen"] == ["GPU-0"]


def test_pack_keeps_a_gpu_reserved_by_an_unlimited_kernel_for_it():
    """pack puts an unlimited kernel on the fullest GPU in use, then nothing else there."""
    # Given a GPU in use by kernel x with 6 GiB free, and an empty GPU
    snapshot = [gpu(0, free_gib=16), gpu(1, free_gib=6, kernels=["x"])]
    placement = Placement(lambda: snapshot, "pack")
    # When a kernel without a limit, then one limited to 2 GiB, are placed
    unlimited = placement.choose("a", 1, None)["chosen"]
    limited = placement.choose("b", 1, 2048)["chosen"]
    # Then the first packs onto the GPU in use, and the second is not stacked on it
    assert unlimited == ["GPU-1"]
    assert limited == ["GPU-0"]
    assert sorted(placement.reserved()) == ["a", "b"]


# -- real server, real kernels --------------------------------------------------------------------

AUTO = {"devices": "auto", "gpu_count": 1}


@pytest.fixture
def tfgpu_config():
    """Three simulated GPUs; "auto" is the admin's default."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "simulated_gpus": [{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 3}],
        "default_policy": AUTO,
    }


async def applied_devices(jp_fetch, kernel_id):
    """What the kernel started with, from GET kernels/{id}."""
    view = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
    return view["applied"]


async def test_three_kernels_started_together_land_on_three_gpus(jp_fetch, jp_serverapp):
    """Three kernels started at once with `auto` get three different GPUs, shown in `applied`."""
    # When three notebooks open at the same time
    sessions = await asyncio.gather(*(start_session(jp_fetch, f"nb{n}.ipynb") for n in range(3)))
    # Then each kernel started on its own GPU, and says how it was chosen
    applied = [await applied_devices(jp_fetch, s["kernel"]["id"]) for s in sessions]
    chosen = [a["devices"] for a in applied]
    assert all(len(c) == 1 for c in chosen)
    assert len({c[0] for c in chosen}) == 3
    assert all(a["devices_requested"] == "auto" for a in applied)
    assert all(a["placement"]["strategy"] == "most_free_memory" for a in applied)
    # And no kernel needs a restart just because its policy says "auto"
    view = json.loads((await jp_fetch("tfgpu", "api", "kernels", sessions[0]["kernel"]["id"])).body)
    assert view["restart_required"] is False


@pytest.mark.parametrize(
    "tfgpu_config",
    [{"backend": "simulated", "sample_interval": 0.2, "default_policy": AUTO,
      "simulated_gpus": [{"memory_gb": 24, "count": 1}, {"memory_gb": 16, "count": 1},
                         {"memory_gb": 12, "count": 1}]}],
)
async def test_kernels_without_a_limit_started_together_land_on_unequal_gpus(jp_fetch, jp_serverapp):
    """Three kernels with `auto` and no limit, started at once, do not all take the 24 GB GPU."""
    # Given three GPUs of 24, 16 and 12 GB and no memory limit anywhere
    # When three notebooks open at the same time
    sessions = await asyncio.gather(*(start_session(jp_fetch, f"free{n}.ipynb") for n in range(3)))
    # Then each kernel started on its own GPU
    applied = [await applied_devices(jp_fetch, s["kernel"]["id"]) for s in sessions]
    assert all(a["memory_limit_mb"] is None for a in applied)
    assert len({a["devices"][0] for a in applied}) == 3


@pytest.mark.parametrize(
    "tfgpu_config",
    [{"backend": "simulated", "simulated_gpus": [{"memory_gb": 16, "count": 3}],
      "default_policy": AUTO, "allowed_devices": [0, 2]}],
)
async def test_an_excluded_gpu_is_never_chosen(jp_fetch, jp_serverapp):
    """With allowed_devices [0, 2], kernels with `auto` only ever get GPU 0 or 2."""
    devices = jp_serverapp.web_app.settings["tfgpu_services"].sampler.devices
    allowed = {devices[0].uuid, devices[2].uuid}
    sessions = await asyncio.gather(*(start_session(jp_fetch, f"x{n}.ipynb") for n in range(3)))
    for session in sessions:
        applied = await applied_devices(jp_fetch, session["kernel"]["id"])
        assert set(applied["devices"]) <= allowed


@pytest.fixture
def lost_gpu_nvml(monkeypatch):
    """Three fake NVML GPUs, GPU 1 lost (fell off the bus)."""
    fake = FakeNvml(gpus=[FakeGpu(name="NVIDIA A100") for _ in range(3)])
    fake.gpus[1].lost = True
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


@pytest.mark.parametrize(
    "tfgpu_config",
    [{"backend": "nvml", "sample_interval": 0.1, "default_policy": AUTO}],
)
async def test_a_lost_gpu_is_never_chosen(lost_gpu_nvml, jp_fetch, jp_serverapp):
    """A GPU NVML reports lost is skipped by placement."""
    lost = lost_gpu_nvml.gpus[1].uuid
    sessions = await asyncio.gather(*(start_session(jp_fetch, f"y{n}.ipynb") for n in range(3)))
    chosen = [(await applied_devices(jp_fetch, s["kernel"]["id"]))["devices"] for s in sessions]
    assert all(lost not in c for c in chosen)
    assert all(len(c) == 1 for c in chosen)

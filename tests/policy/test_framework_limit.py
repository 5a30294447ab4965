"""What a cap means: NVML's figure for the kernel's process. The frameworks get the cap less the
room the CUDA context takes (the framework limit), and the launch document says so."""

from __future__ import annotations

import json

import pytest

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.policy import AdminPolicy, PolicyService, PolicyStore
from jupyter_tfgpu.policy.environment import (
    STARTING_CONTEXT_MB,
    ContextReserve,
    framework_limit_mb,
    render_env,
)
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.protocol import POLICY_ENV

GIB = 2**30
GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-2222-3333-4444-555555555555"
DEVICES = [
    DeviceInfo(index=0, uuid=GPU0, name="NVIDIA H200", memory_total=16 * GIB),
    DeviceInfo(index=1, uuid=GPU1, name="NVIDIA T4", memory_total=8 * GIB),
]
MEASURED = ContextReserve(400, "measured", "NVIDIA H200, driver 580.159.04")


@pytest.mark.parametrize(
    ("cap", "reserve", "limit"), [(4096, 400, 3696), (401, 400, 1), (400, 400, 400), (100, 400, 100)]
)
def test_the_framework_limit_is_the_cap_less_the_reserve_while_there_is_room(cap, reserve, limit):
    """Room left: cap minus reserve; none left: the cap itself (said by the document's note)."""
    assert framework_limit_mb(cap, reserve) == limit


def test_the_launch_document_carries_the_framework_limit_and_where_the_reserve_comes_from():
    """The bootstrap applies the framework limit; the document names the cap, the limit and the
    reserve with its source, and JAX's fraction is the framework limit's share of the GPU."""
    # Given a 4096 MiB cap on GPU 0, whose context was measured at 400 MiB
    policy = {"memory_limit_mb": 4096, "devices": [0]}
    # When it is rendered for a launch
    document = Launch.render(policy, DEVICES, MEASURED, kernel_id="k1").to_json()
    env = render_env(policy, DEVICES, reserve=MEASURED)
    # Then
    assert document["memory_limit_mb"] == 4096
    assert document["framework_limit_mb"] == 3696
    assert document["context_reserve_mb"] == 400
    assert document["context_reserve_source"] == "measured"
    assert document["context_reserve_measured_on"] == "NVIDIA H200, driver 580.159.04"
    assert "memory_limit_note" not in document
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == str(round(3696 / (16 * 1024), 4))


def test_a_cap_that_leaves_no_room_for_the_context_is_said_plainly():
    """A cap at or below the context: the frameworks get the cap, and the note says any GPU use
    passes it."""
    document = Launch.render({"memory_limit_mb": 300}, DEVICES, MEASURED).to_json()
    assert document["framework_limit_mb"] == 300
    assert document["memory_limit_note"] == (
        "memory_limit_mb 300 is at or below the 400 MiB this GPU needs for the CUDA context and "
        "libraries alone: any GPU use passes the cap"
    )


@pytest.mark.parametrize(
    "policy", [{"memory_growth": True}, {"memory_limit_mb": 4096, "devices": []}]
)
def test_no_framework_limit_without_a_cap_on_a_gpu(policy):
    """No cap, or the CPU only: nothing to leave room in."""
    document = Launch.render(policy, DEVICES, MEASURED).to_json()
    assert "framework_limit_mb" not in document and "context_reserve_mb" not in document


def test_without_a_reserve_the_document_and_fraction_are_as_before():
    """Callers that pass no reserve (restart_required's comparison) see the cap only."""
    policy = {"memory_limit_mb": 4096, "devices": [0]}
    assert "framework_limit_mb" not in Launch.render(policy, DEVICES).to_json()
    assert render_env(policy, DEVICES)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.25"


def service(tmp_path, reserve=None) -> PolicyService:
    """A policy service over DEVICES, with a reserve per GPU set (or the default)."""
    return PolicyService(
        PolicyStore(tmp_path / "policies.json"),
        AdminPolicy(),
        devices=lambda: DEVICES,
        root_dir=str(tmp_path),
        context_reserve=reserve,
    )


def test_a_launch_asks_for_the_reserve_of_the_kernels_own_gpus(tmp_path):
    """The reserve is worked out for the GPUs the kernel gets, and goes into env and record."""
    # Given a notebook capped at 2048 MiB on GPU 1, and a reserve that says which GPUs it saw
    asked = []

    def reserve(gpus):
        asked.append(gpus)
        return ContextReserve(300, "measured", "NVIDIA T4, driver 550")

    policies = service(tmp_path, reserve)
    policies.set("nb.ipynb", {"memory_limit_mb": 2048, "devices": [1]})
    # When its kernel starts
    env, launch = policies.launch("k1", "nb.ipynb")
    document = launch.to_json()
    # Then the reserve was asked for GPU 1 only, and the kernel starts with 2048 - 300 MiB
    assert asked == [[GPU1]]
    assert document["framework_limit_mb"] == 1748
    assert json.loads(env[POLICY_ENV])["framework_limit_mb"] == 1748
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == str(round(1748 / (8 * 1024), 4))
    assert launch.framework_limit.reserve.source == "measured"
    # And what an in-process change would apply carries the same framework limit
    nxt = policies.next_start("k1", "nb.ipynb", launch)
    assert nxt["policy"]["framework_limit_mb"] == 1748
    assert nxt["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
    # And a kernel that started so is not "restart required" for it
    assert launch.restart_required(policies.rendered("nb.ipynb"), policies.own("nb.ipynb")) is False


def test_without_a_measurement_the_starting_value_is_used(tmp_path):
    """A service without a measured table uses the documented starting value."""
    policies = service(tmp_path)
    policies.set("nb.ipynb", {"memory_limit_mb": 4096})
    document = policies.launch("k1", "nb.ipynb")[1].to_json()
    assert document["context_reserve_mb"] == STARTING_CONTEXT_MB
    assert document["context_reserve_source"] == "starting value"
    assert document["framework_limit_mb"] == 4096 - STARTING_CONTEXT_MB


def test_a_reserve_that_fails_never_stops_a_launch(tmp_path, caplog):
    """A broken table: the starting value, logged once, and the kernel starts with its policy."""
    def broken(gpus):
        raise RuntimeError("table gone")

    policies = service(tmp_path, broken)
    policies.set("nb.ipynb", {"memory_limit_mb": 4096})
    document = policies.launch("k1", "nb.ipynb")[1].to_json()
    assert document["context_reserve_source"] == "starting value"
    assert "error" not in document
    assert "table gone" in caplog.text

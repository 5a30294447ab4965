"""The websocket stream carries the kernels with each snapshot, so clients need not poll."""

from __future__ import annotations

import asyncio
import json
from importlib.resources import files

import yaml
from jsonschema import Draft202012Validator

from jupyter_tfgpu.gpu.keys import gpu_keys
from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.server.kernels.channel import KernelReports
from jupyter_tfgpu.server.kernels.memory import KernelMemoryReader
from jupyter_tfgpu.server.sampling.sampler import Snapshot
from tests.kernel_helpers import start_session


async def test_stream_messages_list_kernels(jp_fetch, jp_ws_fetch):
    """After a notebook opens, stream messages name its kernel, notebook and GPU memory."""
    # Given a kernel started for a notebook, with a policy
    await jp_fetch("tfgpu", "api", "policies", "live.ipynb", method="PUT", body='{"memory_limit_mb": 2048}')
    session = await start_session(jp_fetch, "live.ipynb")
    kernel_id = session["kernel"]["id"]
    # When a client listens to the stream
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        for _ in range(50):
            message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
            mine = [k for k in message["kernels"] if k["id"] == kernel_id]
            if mine and mine[0]["gpu_memory"] > 0:
                break
        else:
            raise AssertionError("the kernel never appeared with GPU memory in the stream")
    finally:
        ws.close()
    # Then the message has the snapshot's GPUs and the kernel's summary
    assert message["gpus"] and message["simulated"] is True
    assert mine[0]["notebook"] == "live.ipynb"
    assert mine[0]["memory_limit_mb"] == 2048
    assert mine[0]["restart_required"] is False
    # And every kernel in it is as the spec's StreamKernel schema says (the lab's types mirror it)
    spec = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
    validator = Draft202012Validator(spec["components"]["schemas"]["StreamKernel"])
    for kernel in message["kernels"]:
        validator.validate(kernel)


def _snapshot(used: int | None) -> Snapshot:
    gpu = {
        "index": 0,
        "uuid": "GPU-a",
        "mig": {"instances": [{"uuid": "MIG-a1"}]},
        "processes": [
            {"pid": 7, "used_memory": used, "kernel_id": "k1", "attributed_by": "pid"},
            {"pid": 8, "used_memory": 5, "kernel_id": None, "attributed_by": None},
        ],
    }
    return Snapshot(1.0, False, (GpuReading.from_json(gpu),))


def test_gpu_keys_name_a_gpu_by_uuid_index_and_mig_instances():
    """A reporter may name a GPU by its UUID, its index or a MIG instance's UUID."""
    # Given / When / Then
    assert gpu_keys(_snapshot(1).gpus[0]) == {"GPU-a", "0", "MIG-a1"}


def test_kernel_memory_is_worked_out_once_per_snapshot():
    """Every view of one snapshot shares one reading; a new snapshot or report is read anew."""
    # Given a snapshot where NVML gives no figure for the kernel's PID, and a reporter's figure
    reports = KernelReports()
    reports.put("k1", {"framework": "torch", "pid": 7, "devices": [{"uuid": "MIG-a1", "reserved": 3}]})
    latest = [_snapshot(None)]
    reader = KernelMemoryReader(lambda: latest[0], reports)
    # When two views read it
    first, again = reader.of("k1"), reader.of("k1")
    # Then they share the result, which takes the reporter's figure
    assert again is first
    assert first.as_dict() == {
        "total": 3,
        "source": "kernel_report",
        "unknown": None,
        "per_gpu": [{"index": 0, "uuid": "GPU-a", "used_memory": 3, "source": "kernel_report", "pids": [7]}],
    }
    # When the sampler publishes a new snapshot with NVML's figure, NVML's figure wins
    latest[0] = _snapshot(2)
    assert reader.of("k1").as_dict()["per_gpu"][0] == {
        "index": 0, "uuid": "GPU-a", "used_memory": 2, "source": "nvml", "pids": [7],
    }
    # And a kernel that holds nothing has nothing
    assert reader.of("k2").as_dict() == {
        "total": 0, "source": None, "unknown": None, "per_gpu": [],
    }

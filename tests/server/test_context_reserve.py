"""A kernel at its own limit is not over its cap: end to end, real server and kernels, the fake
NVML reporting each kernel process as its framework's reserved memory plus a CUDA context.

The cap is what NVML shows for the kernel's process. Kernels start with the framework limit (the
cap less the context reserve); the server measures the context (NVML's figure less the
framework's reported pool, for the same process) and later launches leave that much. The
enforcer (restart, short grace) holds NVML's figure to the cap, and a figure that is only the
kernel's own report to the framework limit.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from jupyter_tfgpu.policy.environment import STARTING_CONTEXT_MB
from jupyter_tfgpu.server.api.handlers import SERVICES_KEY
from jupyter_tfgpu.server.services import ENFORCEMENT_EVENT
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess
from tests.kernel_helpers import kernel_token, poll, run_json, start_session
from tests.server.test_container_attribution import post_report, unused_pid
from tests.server.test_enforcement import listen

MIB = 2**20
CAP = 4096
CONTEXT = 450  # what the fake driver shows per process beyond its framework's pool, MiB


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """One 80 GiB A100 (driver 550.54.15), no processes yet."""
    return FakeNvml(gpus=[FakeGpu()])


@pytest.fixture
def tfgpu_config():
    """NVML over the fake; every notebook capped at 4096 MiB; restarts after a short grace."""
    return {
        "backend": "nvml",
        "sample_interval": 0.1,
        "process_interval": 0.2,
        "default_policy": {"memory_limit_mb": CAP},
        "enforcement": "restart",
        "enforcement_grace": 0.5,
    }


def services(jp_serverapp):
    """The extension's services."""
    return jp_serverapp.web_app.settings[SERVICES_KEY]


async def kernel_view(jp_fetch, kernel_id: str) -> dict:
    """GET kernels/{id}."""
    return json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)


async def start(jp_fetch, jp_serverapp, notebook: str) -> tuple[str, int, dict]:
    """A kernel for ``notebook``: its id, PID and the launch document it started with."""
    kernel_id = (await start_session(jp_fetch, notebook))["kernel"]["id"]
    pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    return kernel_id, pid, (await kernel_view(jp_fetch, kernel_id))["applied"]


async def rounds_pass(jp_serverapp, count: int = 20) -> None:
    """Wait until the sampler has taken ``count`` more snapshots (the enforcer judges each)."""
    sampler = services(jp_serverapp).sampler
    until = sampler.rounds + count
    await poll(lambda: asyncio.sleep(0, sampler.rounds >= until), timeout=30)


async def report_pool(jp_fetch, token: str, gpu_uuid: str, pool_mib: int) -> None:
    """The kernel's JAX reports its allocator pool on the GPU (as tfgpu_report does)."""
    body = {"framework": "jax", "pid": 1, "devices": [{"uuid": gpu_uuid, "reserved": pool_mib * MIB}]}
    assert await post_report(jp_fetch, token, body) == 204


async def test_a_kernel_at_its_framework_limit_is_never_over_its_cap(
    jp_fetch, jp_serverapp, fake_nvml
):
    """JAX at its whole fraction: NVML shows the framework limit plus the context, within the cap,
    and nothing is done; the measured context is left by the next launch."""
    events = listen(jp_serverapp, ENFORCEMENT_EVENT)
    gpu = fake_nvml.gpus[0]
    # Given a capped kernel, started before any measurement: the starting value is left
    a, a_pid, applied = await start(jp_fetch, jp_serverapp, "a.ipynb")
    assert applied["memory_limit_mb"] == CAP
    assert applied["context_reserve_source"] == "starting value"
    assert applied["context_reserve_mb"] == STARTING_CONTEXT_MB
    limit = applied["framework_limit_mb"]
    assert limit == CAP - STARTING_CONTEXT_MB

    # When its framework holds its whole limit, and NVML shows that plus the context
    gpu.processes.append(FakeProcess(pid=a_pid, used_memory=(limit + CONTEXT) * MIB))
    token = await kernel_token(jp_serverapp, a)

    async def measured():
        # A report every few rounds, as the reporter sends them: the table needs two that agree.
        await report_pool(jp_fetch, token, gpu.uuid, limit)
        await asyncio.sleep(0.3)
        return services(jp_serverapp).contexts.to_json()

    # Then the server measures the context from the two figures of the same process
    [row] = await poll(measured, timeout=30)
    assert row == {
        "gpu": gpu.name, "driver": fake_nvml.driver_version,
        "context_mb": CONTEXT, "kernels_measured": 1,
    }  # fmt: skip
    # And an admin sees the measurement, and the starting value, in GET status
    status = json.loads((await jp_fetch("tfgpu", "api", "status")).body)
    assert status["context_reserve"] == {"starting_mb": STARTING_CONTEXT_MB, "measured": [row]}

    # And a kernel started now leaves the measured context, and its JAX gets that share
    b, b_pid, applied_b = await start(jp_fetch, jp_serverapp, "b.ipynb")
    assert applied_b["context_reserve_mb"] == CONTEXT
    assert applied_b["context_reserve_source"] == "measured"
    assert applied_b["context_reserve_measured_on"] == f"{gpu.name}, driver {fake_nvml.driver_version}"
    assert applied_b["framework_limit_mb"] == CAP - CONTEXT
    fraction = await run_json(
        jp_serverapp, b, "import json, os; print(json.dumps(os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']))"
    )
    assert fraction == str(round((CAP - CONTEXT) * MIB / gpu.memory_total, 4))

    # When B holds its whole framework limit too: NVML shows exactly the cap
    gpu.processes.append(FakeProcess(pid=b_pid, used_memory=CAP * MIB))
    await rounds_pass(jp_serverapp)

    # Then neither kernel was acted on, through many snapshots past the grace period
    assert events == []
    kernels = jp_serverapp.kernel_manager
    assert kernels.get_kernel(a).provisioner.pid == a_pid
    assert kernels.get_kernel(b).provisioner.pid == b_pid

    # And one MiB over the cap in NVML is over it (the enforcer is on): B is restarted
    gpu.processes[-1] = FakeProcess(pid=b_pid, used_memory=(CAP + 1) * MIB)
    await poll(lambda: asyncio.sleep(0, events), timeout=30)
    assert [(e["kernel_id"], e["action"]) for e in events] == [(b, "restart")]
    assert "over its cap of 4096 MiB" in events[0]["reason"]
    assert kernels.get_kernel(a).provisioner.pid == a_pid


async def test_a_figure_that_is_only_the_kernels_report_is_held_to_the_framework_limit(
    jp_fetch, jp_serverapp, fake_nvml
):
    """Inside a container NVML's PID is no kernel's: the kernel's report (no CUDA context in
    it) is compared with the framework limit, so being under the cap is not enough."""
    events = listen(jp_serverapp, ENFORCEMENT_EVENT)
    gpu = fake_nvml.gpus[0]
    # Given a capped kernel whose process NVML lists under a PID of another namespace
    c, _, applied = await start(jp_fetch, jp_serverapp, "c.ipynb")
    limit = applied["framework_limit_mb"]
    gpu.processes.append(FakeProcess(pid=unused_pid(), used_memory=(limit + CONTEXT) * MIB))
    token = await kernel_token(jp_serverapp, c)

    # When it reports its whole framework limit
    await report_pool(jp_fetch, token, gpu.uuid, limit)
    view = await kernel_view(jp_fetch, c)
    assert view["gpu_memory"]["source"] == "kernel_report"
    await rounds_pass(jp_serverapp)
    # Then it is within its limit: nothing is done
    assert events == []

    # When it reports 100 MiB more: still under the cap, but over its framework limit
    await report_pool(jp_fetch, token, gpu.uuid, limit + 100)

    # Then it is over, and the reason says by how its figure was judged
    await poll(lambda: asyncio.sleep(0, events), timeout=30)
    assert (events[0]["kernel_id"], events[0]["action"]) == (c, "restart")
    assert events[0]["limit_bytes"] == limit * MIB and events[0]["memory_bytes"] == (limit + 100) * MIB
    assert "by its own report" in events[0]["reason"]
    assert (
        f"its framework limit of {limit} MiB (its cap of {CAP} MiB less {STARTING_CONTEXT_MB} MiB "
        "for the CUDA context, which its report leaves out)"
    ) in events[0]["reason"]


SPY_AND_APPLY = """
import json
import tensorflow as tf
import tfgpu_bootstrap
GPUS = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
limits = []
tf.config.list_physical_devices = lambda kind=None: GPUS
tf.config.set_logical_device_configuration = (
    lambda gpu, configs: limits.extend(c.memory_limit for c in configs)
)
result = tfgpu_bootstrap.apply_now("tensorflow")
print(json.dumps({"limits": limits, "applied": result["applied"]}))
"""


@pytest.mark.tensorflow
async def test_a_real_kernels_bootstrap_applies_and_records_the_framework_limit(
    jp_fetch, jp_serverapp, fake_nvml
):
    """TensorFlow (CPU build, its GPU calls spied on) in a kernel the server started: the virtual
    device gets the framework limit, and the record the server reads says so."""
    pytest.importorskip("tensorflow")
    # Given a capped kernel
    kernel_id, _, applied = await start(jp_fetch, jp_serverapp, "tf.ipynb")
    limit = applied["framework_limit_mb"]
    # When TensorFlow applies the policy the kernel started with
    seen = await run_json(jp_serverapp, kernel_id, SPY_AND_APPLY, timeout=240)
    # Then its GPU got the framework limit, not the cap
    assert seen["limits"] == [limit]
    [entry] = seen["applied"]
    assert (entry["value"], entry["framework_limit_mb"]) == (CAP, limit)
    assert entry["context_reserve_mb"] == applied["context_reserve_mb"]

    # And GET kernels/{id} shows the record the kernel wrote
    async def recorded():
        view = await kernel_view(jp_fetch, kernel_id)
        tensorflow = ((view["framework"] or {}).get("frameworks") or {}).get("tensorflow") or {}
        return tensorflow.get("applied")

    [shown] = await poll(recorded, timeout=30)
    assert shown["framework_limit_mb"] == limit

"""NVML faults through a real jupyter_server: every route keeps answering, with nulls and reasons.

The driver boundary is the fake pynvml (nvidia-ml-py's own ``NVMLError_*`` classes); faults are
injected on chosen calls at start and while the server runs. The counts printed at the end of
each test are the figures docs/reliability.md quotes (run with ``-s`` to see them).
"""

from __future__ import annotations

import json

import pynvml
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from importlib.resources import files
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess
from tests.kernel_helpers import poll

SPEC = OpenAPI.from_dict(
    yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
)
GIB = 2**30
# The server retries a failed open this often in these tests (5 s, doubling, in production).
RETRY_SECONDS = 0.05


def four_gpus() -> FakeNvml:
    """Four healthy GPUs, each with one process."""
    return FakeNvml(
        gpus=[
            FakeGpu(
                util_gpu=10 + i,
                temperature=40 + i,
                memory_used=(i + 1) * GIB,
                processes=[FakeProcess(pid=4000 + i, used_memory=GIB)],
            )
            for i in range(4)
        ]
    )


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """The NVML library the server sees."""
    return four_gpus()


@pytest.fixture
def start_fault() -> tuple[str, int] | None:
    """(call, NVML error code) that fails from the start until the test clears it."""
    return None


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
def installed_nvml(installed_nvml, monkeypatch, start_fault) -> FakeNvml:
    """The fake installed as ``pynvml`` (tests/conftest.py), with the start fault if any, and
    short open retries."""
    monkeypatch.setattr("jupyter_tfgpu.server.sampling.opening.OPEN_RETRY_SECONDS", RETRY_SECONDS)
    monkeypatch.setattr("jupyter_tfgpu.server.sampling.opening.OPEN_RETRY_MAX_SECONDS", RETRY_SECONDS)
    if start_fault is not None:
        installed_nvml.inject(*start_fault)
    return installed_nvml


class Client:
    """GETs the API and /metrics, checks each answer is 200 (and in the spec), counts them."""

    def __init__(self, jp_fetch) -> None:
        self.fetch = jp_fetch
        self.served = 0

    async def api(self, path: str) -> dict:
        """GET ``tfgpu/api/<path>``: 200, valid against the spec, decoded."""
        response = await self.fetch("tfgpu", "api", *path.split("/"))
        assert response.code == 200
        request = MockRequest("http://localhost", "get", f"/tfgpu/api/{path}")
        body = MockResponse(response.body, status_code=200, content_type="application/json")
        SPEC.validate_response(request, body)
        self.served += 1
        return json.loads(response.body)

    async def metrics(self) -> str:
        """GET jupyter_server's own /metrics (with the token): 200, the text."""
        response = await self.fetch("metrics")
        assert response.code == 200
        self.served += 1
        return response.body.decode()

    async def all_routes(self) -> tuple[dict, dict, str]:
        """status, gpus and /metrics, once each."""
        return await self.api("status"), await self.api("gpus"), await self.metrics()


START_FAULTS = {
    "init-timeout": (("nvmlInit", pynvml.NVML_ERROR_TIMEOUT), "Timeout"),
    "init-unknown": (("nvmlInit", pynvml.NVML_ERROR_UNKNOWN), "Unknown Error"),
    "count-timeout": (("nvmlDeviceGetCount", pynvml.NVML_ERROR_TIMEOUT), "Timeout"),
}


@pytest.mark.parametrize(("start_fault", "said"), START_FAULTS.values(), ids=START_FAULTS.keys())
async def test_nvml_failing_at_start_serves_unavailable_then_recovers(
    jp_fetch, installed_nvml, start_fault, said
):
    """NVML failing at start: status says why (not 404); once NVML answers, the GPUs appear."""
    # Given a server whose NVML failed to start (and keeps failing for now)
    client = Client(jp_fetch)

    async def failed():  # the sampler's thread opens NVML: wait for its first outcome
        return (await client.api("status"))["retry_in"] is not None

    await poll(failed)

    # When the routes are asked while it fails
    status, gpus, _ = await client.all_routes()

    async def retried():
        return installed_nvml.faults_raised >= 3

    await poll(retried)
    still = await client.api("status")

    # Then they answer: unavailable, the reason, when the next try is, and no rows
    assert status["available"] is False
    assert status["configured_backend"] == "nvml"
    assert status["reason"] == said
    assert isinstance(status["retry_in"], (int, float))
    assert gpus["gpus"] == []
    assert still["available"] is False and still["reason"] == status["reason"]

    # When NVML answers again
    installed_nvml.clear()

    async def opened():
        data = await client.api("status")
        return data if data["available"] else None

    status = await poll(opened)

    # Then status, gpus and the policies all see the four GPUs
    assert status["backend"] == "nvml"
    assert status["device_count"] == 4
    assert status["reason"] is None
    assert status["retry_in"] is None

    async def rows():
        data = await client.api("gpus")
        return data["gpus"] if len(data["gpus"]) == 4 and data["timestamp"] else None

    gpus = await poll(rows)
    assert [g["temperature"] for g in gpus] == [40, 41, 42, 43]
    response = await jp_fetch(
        "tfgpu", "api", "policies", "nb.ipynb", method="PUT",
        body=json.dumps({"devices": [7]}), raise_error=False,
    )  # fmt: skip
    assert response.code == 400
    assert "no GPU 7" in json.loads(response.body)["message"]
    assert "tfgpu_gpu_temperature_celsius" in await client.metrics()
    print(
        f"\n[nvml-faults] start {start_fault[0]} {said}: requests served {client.served}, "
        f"faults survived {installed_nvml.faults_raised}"
    )


# call, error, GPU, the field that goes null
MID_RUN_FAULTS = [
    ("nvmlDeviceGetTemperature", pynvml.NVML_ERROR_TIMEOUT, 1, "temperature"),
    ("nvmlDeviceGetUtilizationRates", pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, 2, "utilization"),
    ("nvmlDeviceGetPowerUsage", RuntimeError("binding bug"), 0, "power.draw"),
    ("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_DRIVER_NOT_LOADED, 3, "memory"),
    ("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_TIMEOUT, 3, "processes"),
]


async def test_faults_mid_run_keep_every_route_answering(jp_fetch, jp_serverapp, installed_nvml):
    """Faults on several calls of several GPUs: nulls with reasons, 200s everywhere, recovery."""
    # Given a server that has sampled its four GPUs
    client = Client(jp_fetch)
    sampler = jp_serverapp.web_app.settings["tfgpu_services"].sampler

    async def sampled():
        return sampler.rounds >= 2

    await poll(sampled)

    # When faults are injected on five calls, one of them hanging before it times out
    for call, error, gpu, _ in MID_RUN_FAULTS:
        installed_nvml.inject(call, error, gpu=gpu, delay=0.01 if "Processes" in call else 0.0)

    async def all_failing():
        _, gpus, _ = await client.all_routes()
        rows = gpus["gpus"]
        failing = all(field in rows[gpu]["errors"] for _, _, gpu, field in MID_RUN_FAULTS)
        return rows if failing else None

    rows = await poll(all_failing)
    until = sampler.rounds + 20

    async def twenty_rounds_on():
        nonlocal status, metrics
        status, _, metrics = await client.all_routes()
        return sampler.rounds >= until

    status, metrics = {}, ""
    await poll(twenty_rounds_on)

    # Then each failing field is null with its call and reason, and nothing else is
    assert rows[1]["temperature"] is None
    assert rows[1]["errors"] == {"temperature": "nvmlDeviceGetTemperature: Timeout"}
    assert rows[2]["utilization"] == {"gpu": None, "memory": None}
    assert rows[0]["power"]["draw"] is None
    assert rows[0]["errors"] == {"power.draw": "nvmlDeviceGetPowerUsage: RuntimeError: binding bug"}
    assert rows[3]["memory"]["used"] is None
    assert [p["pid"] for p in rows[3]["processes"]] == [4003]  # the last list, kept
    assert rows[3]["processes_stale"] == rows[3]["errors"]["processes"]
    assert "Timeout" in rows[3]["errors"]["processes"]
    assert [r["lost"] for r in rows] == [False] * 4
    assert rows[0]["temperature"] == 40 and rows[2]["temperature"] == 42
    assert [p["pid"] for p in rows[1]["processes"]] == [4001]
    assert status["available"] is True and status["device_count"] == 4
    # And /metrics leaves out what is unknown rather than saying 0
    temperatures = [
        sample.labels["gpu"]
        for family in text_string_to_metric_families(metrics)
        if family.name == "tfgpu_gpu_temperature_celsius"
        for sample in family.samples
    ]
    assert "0" in temperatures and "1" not in temperatures

    # When the driver answers again
    installed_nvml.clear()

    async def recovered():
        rows = (await client.api("gpus"))["gpus"]
        return rows if all(not r["errors"] for r in rows) else None

    rows = await poll(recovered)

    # Then every field is back
    assert [r["temperature"] for r in rows] == [40, 41, 42, 43]
    assert rows[2]["utilization"]["gpu"] == 12
    assert rows[3]["memory"]["used"] == 4 * GIB
    assert [p["pid"] for p in rows[3]["processes"]] == [4003]
    assert rows[3]["processes_stale"] is None
    print(
        f"\n[nvml-faults] mid-run: requests served {client.served}, "
        f"faults survived {installed_nvml.faults_raised}"
    )


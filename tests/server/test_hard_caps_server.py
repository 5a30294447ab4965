"""How each kernel's cap is enforced, said everywhere a real server shows its kernels: GET
kernels/{id}, the stream, /metrics, GET status and GET config, each against the OpenAPI spec.

With hard caps off (the default), and with a mechanism in mode mps (the recording one of
``hardcaps_helpers``, through the real provisioner and real kernels).
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from jsonschema import Draft202012Validator

from tests.kernel_helpers import poll, run_json, start_session
from tests.server.hardcaps_helpers import WRAPPED_ENV, RecordingMechanism, reset_recording, with_mechanism
from tests.server.spec_helpers import SPEC
from tests.server.spec_helpers import get_checked as get

READ_ENV = f"""
import json, os
print(json.dumps({{n: os.environ.get(n) for n in ("{WRAPPED_ENV}", "TFGPU_TEST_WRAPPER", "TFGPU_POLICY")}}))
"""


async def capped_kernel(jp_fetch, notebook: str = "capped.ipynb", limit: int = 2048) -> str:
    await jp_fetch("tfgpu", "api", "policies", notebook, method="PUT",
                   body=json.dumps({"memory_limit_mb": limit, "devices": [0]}))  # fmt: skip
    return (await start_session(jp_fetch, notebook))["kernel"]["id"]


# -- hard caps off ---------------------------------------------------------------------------------


async def test_with_hard_caps_off_a_capped_kernel_is_cooperative_everywhere(jp_fetch, jp_ws_fetch, jp_serverapp):
    # Given a kernel started with a cap on GPU 0
    kernel_id = await capped_kernel(jp_fetch)
    services = jp_serverapp.web_app.settings["tfgpu_services"]
    uuid = services.sampler.devices[0].uuid
    # Then GET kernels/{id} says how its cap is held: overall, and per GPU in what it started with
    view = await get(jp_fetch, "kernels", kernel_id)
    assert view["enforcement"]["level"] == "framework"
    assert view["enforcement"]["mechanism"] == "framework_settings"
    assert view["applied"]["enforcement"]["gpus"] == [
        {"gpu": uuid, "level": "framework", "mechanism": "framework_settings",
         "reason": view["enforcement"]["reason"]},
    ]  # fmt: skip
    # And the kernel was told the same in its TFGPU_POLICY
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    assert json.loads(env["TFGPU_POLICY"])["enforcement"] == view["applied"]["enforcement"]
    assert env[WRAPPED_ENV] is None
    # And the stream's kernel summary has the level
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
    finally:
        ws.close()
    validator = Draft202012Validator(SPEC["components"]["schemas"]["StreamKernel"])
    for row in message["kernels"]:
        validator.validate(row)
    assert [k["enforcement"] for k in message["kernels"] if k["id"] == kernel_id] == ["framework"]
    # And /metrics labels its cap with it
    metrics = (await jp_fetch("metrics")).body.decode()
    line = next(x for x in metrics.splitlines() if x.startswith("tfgpu_kernel_memory_limit_bytes{"))
    assert f'kernel_id="{kernel_id}"' in line and 'enforcement="framework"' in line
    # And GET status and GET config say hard caps are off, and nothing was looked at
    status = await get(jp_fetch, "status")
    assert status["hard_caps"]["asked"] == status["hard_caps"]["in_force"] == "off"
    assert status["hard_caps"]["host"] is None
    assert (await get(jp_fetch, "config"))["hard_caps"] == "off"


async def test_a_kernel_another_provisioner_started_has_no_cap_saying_why(jp_fetch, jp_serverapp, jp_data_dir):
    # Given a kernelspec that names jupyter_client's own provisioner
    spec_dir = jp_data_dir / "kernels" / "plain-python"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Plain Python", "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}},
    }))  # fmt: skip
    await jp_fetch("tfgpu", "api", "policies", "plain.ipynb", method="PUT",
                   body=json.dumps({"memory_limit_mb": 1024}))  # fmt: skip
    # When a session starts with it
    session = await start_session(jp_fetch, "plain.ipynb", kernel_name="plain-python")
    # Then its level is none, and the reason names its provisioner
    view = await get(jp_fetch, "kernels", session["kernel"]["id"])
    assert view["applied"] is None
    assert view["enforcement"] == {
        "level": "none",
        "mechanism": None,
        "reason": "started without a policy from this server (by LocalProvisioner): no setting "
        "reaches it",
    }


# -- a mechanism in mode mps --------------------------------------------------------------------------


@pytest.fixture
def recording_mps(monkeypatch):
    """Mode mps runs the recording mechanism, which puts `env TFGPU_TEST_WRAPPER=1` before each
    kernel's command."""
    reset_recording()
    with_mechanism(monkeypatch, "mps")
    RecordingMechanism.wrapper = ("env", "TFGPU_TEST_WRAPPER=1")
    yield RecordingMechanism
    reset_recording()


@pytest.fixture
def tfgpu_config(tfgpu_config, request):
    """The root conftest's settings, with TFGPU.hard_caps from the test's parameter."""
    return {**tfgpu_config, "hard_caps": getattr(request, "param", "off")}


@pytest.mark.parametrize("tfgpu_config", ["mps"], indirect=True)
async def test_a_kernel_starts_stops_and_restarts_through_the_mechanism(
    recording_mps, jp_fetch, jp_serverapp
):
    # Given a server whose mode in force is mps
    status = await get(jp_fetch, "status")
    assert (status["hard_caps"]["in_force"], status["hard_caps"]["mechanism"]["state"]) == ("mps", "running")
    mechanism = RecordingMechanism.made[-1]
    # When a capped kernel starts
    kernel_id = await capped_kernel(jp_fetch)
    # Then it runs under the mechanism's wrapper, with its variables and its enforcement
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    assert (env[WRAPPED_ENV], env["TFGPU_TEST_WRAPPER"]) == ("limit=2048", "1")
    view = await get(jp_fetch, "kernels", kernel_id)
    assert view["enforcement"]["mechanism"] == "mps" and view["enforcement"]["level"] == "framework"
    assert "no GPU run has shown it holding" in view["enforcement"]["reason"]
    # When it is restarted at once (its processes signalled), then shut down
    manager = jp_serverapp.kernel_manager
    await manager.restart_kernel(kernel_id, now=True)
    await poll(lambda: asyncio.sleep(0, mechanism.names().count("prepare") == 2), timeout=30)
    await manager.shutdown_kernel(kernel_id, now=True)
    # Then the mechanism acted before each signal, released the kernel each time its process was
    # gone, and prepared it again for the restart, all in its own thread
    mine = [call[0] for call in mechanism.calls if len(call) > 1 and call[1] == kernel_id]
    assert mine[:4] == ["prepare", "before_signal", "release", "prepare"]
    assert mine[-2:] == ["before_signal", "release"]
    assert mechanism.threads == {"tfgpu-hardcaps"}


@pytest.mark.parametrize("tfgpu_config", ["mps"], indirect=True)
async def test_a_kernel_whose_limit_cannot_be_set_starts_with_its_framework_settings(
    recording_mps, jp_fetch, jp_serverapp
):
    RecordingMechanism.fail_prepare = "no MPS daemon answers"
    kernel_id = await capped_kernel(jp_fetch)
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    assert env[WRAPPED_ENV] is None and env["TFGPU_TEST_WRAPPER"] is None
    assert json.loads(env["TFGPU_POLICY"])["memory_limit_mb"] == 2048
    view = await get(jp_fetch, "kernels", kernel_id)
    assert view["enforcement"]["level"] == "framework"
    assert view["enforcement"]["reason"].startswith(
        "the mps limit could not be set (no MPS daemon answers); the framework settings"
    )


@pytest.mark.parametrize("tfgpu_config", ["mps"], indirect=True)
async def test_the_server_stops_its_kernels_before_the_mechanism(recording_mps, jp_fetch, jp_serverapp):
    # Given a kernel running under the mechanism
    kernel_id = await capped_kernel(jp_fetch)
    mechanism = RecordingMechanism.made[-1]
    app = jp_serverapp.web_app.settings["jupyter_tfgpu"]
    # When the extension stops (as the server does, before it stops the kernels itself)
    await app.stop_extension()
    # Then the kernel was shut down and released before the mechanism stopped
    assert kernel_id not in jp_serverapp.kernel_manager
    assert mechanism.names()[-2:] == ["release", "stop"]
    assert mechanism.calls[-2] == ("release", kernel_id)


@pytest.mark.parametrize("tfgpu_config", ["auto"], indirect=True)
async def test_auto_on_a_machine_without_what_the_modes_need_is_off_saying_why(jp_fetch):
    status = (await get(jp_fetch, "status"))["hard_caps"]
    assert (status["asked"], status["in_force"]) == ("auto", "off")
    assert status["reason"].startswith("nvml: ")
    assert "; mps: " in status["reason"]
    assert [m["name"] for m in status["modes"]] == ["nvml", "mps"]
    assert status["modes"][0]["implemented"] is True
    assert status["host"] is not None
    assert (await get(jp_fetch, "config"))["problems"] == []  # auto asked for nothing in particular

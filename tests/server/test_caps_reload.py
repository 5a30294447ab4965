"""Caps changed in the caps file reach a running server, its API, its stream and its kernels.

A real jupyter_server with the simulated backend and real kernels; the watcher looks every
50 ms here instead of every 2 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from tornado.httpclient import HTTPClientError

import jupyter_tfgpu.server.caps_file as caps_file_module
import jupyter_tfgpu.server.caps_watcher as caps_watcher_module
from jupyter_tfgpu.server.api.handlers import SERVICES_KEY
from tests.kernel_helpers import poll, start_session

SPEC = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
MiB = 2**20
FIRST = {"max_memory_mb": 40960, "enforcement": "warn", "enforcement_grace": 0}


@pytest.fixture(autouse=True)
def quick_watcher(monkeypatch):
    """Look every 50 ms; and as a non-root test user, run "as another user" than the files'
    owner, as a server under its own account does."""
    monkeypatch.setattr(caps_watcher_module, "POLL_SECONDS", 0.05)
    if os.geteuid() != 0:
        monkeypatch.setattr(caps_file_module, "server_uid", lambda: os.geteuid() + 1)


@pytest.fixture
def caps_path(tmp_path, request) -> Path:
    """The admin's caps file, in a folder only its owner can write."""
    folder = tmp_path / "admin"
    folder.mkdir(mode=0o755)
    path = folder / "tfgpu-caps.json"
    path.write_text(json.dumps(getattr(request, "param", FIRST)))
    path.chmod(0o644)
    return path


@pytest.fixture
def tfgpu_config(caps_path):
    """Simulated GPUs sampled often; the caps in the caps file, a different cap in the config."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "process_interval": 0.4,
        "slow_interval": 1.0,
        "history_seconds": 60,
        "max_memory_mb": 8192,
        "max_threads": 8,
        "caps_file": str(caps_path),
    }


def write(path: Path, data) -> None:
    """Replace the caps file as an admin would (a new file moved into place)."""
    new = path.with_name(path.name + ".new")
    new.write_text(data if isinstance(data, str) else json.dumps(data))
    new.chmod(0o644)
    os.replace(new, path)


async def get_config(jp_fetch) -> dict:
    return json.loads((await jp_fetch("tfgpu", "api", "config")).body)


async def config_where(jp_fetch, check) -> dict:
    """GET config once ``check(config)`` holds (the watcher has read the change)."""

    async def answer():
        config = await get_config(jp_fetch)
        return config if check(config) else None

    return await poll(answer, timeout=20)


class Lines(logging.Handler):
    """What the extension logs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record):
        self.lines.append((record.levelno, record.getMessage()))


@pytest.fixture
def logged(jp_serverapp):
    services = jp_serverapp.web_app.settings[SERVICES_KEY]
    handler = Lines()
    services.caps_file.log.addHandler(handler)
    yield handler.lines
    services.caps_file.log.removeHandler(handler)


async def test_get_config_shows_the_caps_file_and_what_came_from_it(jp_fetch, caps_path):
    # Given a server started with a caps file over a config with another cap
    response = await jp_fetch("tfgpu", "api", "config")
    config = json.loads(response.body)
    # Then the file's values are in force over the config's, the config's others hold
    assert config["max_memory_mb"] == 40960 and config["max_threads"] == 8
    assert config["enforcement"]["action"] == "warn" and config["enforcement"]["grace"] == 0
    # And GET config says where they came from, and shows the store's path
    state = config["caps_file"]
    assert state["path"] == str(caps_path) and state["in_force"] is True
    assert state["settings"] == ["max_memory_mb", "enforcement", "enforcement_grace"]
    assert state["overridden"] == [] and state["read_at"] == state["applied_at"]
    assert config["policy_store_path"].endswith("policies.json")
    assert config["problems"] == []
    # And the answer is exactly what the spec describes
    request = MockRequest("http://localhost", "get", "/tfgpu/api/config")
    body = MockResponse(response.body, status_code=response.code, content_type="application/json")
    OpenAPI.from_dict(SPEC).validate_response(request, body)


async def test_a_changed_file_is_in_force_at_once_and_open_views_are_told(
    jp_fetch, jp_ws_fetch, caps_path, logged
):
    # Given an open stream, and a notebook policy asking for 30 GiB (within the 40 GiB cap)
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        epoch = json.loads(await ws.read_message())["policies"]["epoch"]
        body = json.dumps({"memory_limit_mb": 30720})
        await jp_fetch("tfgpu", "api", "policies", "a.ipynb", method="PUT", body=body)
        # When the admin lowers the cap to 20 GiB and moves to restart
        write(caps_path, {"max_memory_mb": 20480, "enforcement": "restart", "enforcement_grace": 0})
        config = await config_where(jp_fetch, lambda c: c["max_memory_mb"] == 20480)

        # Then the stream tells every view to read everything again (a new epoch)
        async def new_epoch():
            message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
            return message["policies"]["epoch"] != epoch

        await poll(new_epoch, timeout=20)
    finally:
        ws.close()
    # And everything changed at once: the rules, the effective policies, the refusals
    assert config["enforcement"]["action"] == "restart"
    described = json.loads((await jp_fetch("tfgpu", "api", "policies", "a.ipynb")).body)
    assert described["effective"]["memory_limit_mb"] == 20480
    assert described["effective"]["sources"]["memory_limit_mb"] == "cap"
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("tfgpu", "api", "policies", "a.ipynb", method="PUT", body=body)
    assert refused.value.code == 403
    # And one INFO line named what changed
    assert (
        logging.INFO,
        f"jupyter-tfgpu: caps changed from {caps_path}: max_memory_mb 40960 -> 20480, "
        "enforcement warn -> restart",
    ) in logged


async def test_a_bad_file_keeps_the_caps_and_is_listed_until_it_is_fixed(jp_fetch, caps_path, logged):
    # When the admin saves a file with a mistake
    write(caps_path, {"max_memory_mb": 20480, "enforcement": "kill"})
    config = await config_where(jp_fetch, lambda c: c["problems"])
    # Then the caps in force are as they were, and the problem names the setting and the file
    assert config["max_memory_mb"] == 40960 and config["enforcement"]["action"] == "warn"
    assert [(p["setting"], p["file"]) for p in config["problems"]] == [("TFGPU.enforcement", str(caps_path))]
    assert "'kill'" in config["problems"][0]["message"]
    assert [line for level, line in logged if level == logging.ERROR][0].startswith(
        f"jupyter-tfgpu: TFGPU.enforcement in {caps_path}: "
    )
    # When the file becomes writable by others
    write(caps_path, FIRST)
    caps_path.chmod(0o666)
    config = await config_where(jp_fetch, lambda c: "chmod go-w" in json.dumps(c["problems"]))
    assert config["max_memory_mb"] == 40960
    # When it is fixed
    caps_path.chmod(0o644)
    write(caps_path, {**FIRST, "max_memory_mb": 10240})
    config = await config_where(jp_fetch, lambda c: not c["problems"])
    # Then it is in force, and nothing is listed any more
    assert config["max_memory_mb"] == 10240


@pytest.mark.parametrize("caps_path", [{"allow_user_policies": True}], indirect=True)
async def test_the_file_wins_over_the_config_and_a_setting_taken_out_is_the_configs_again(jp_fetch, caps_path):
    """The file wins over the config files; a setting it no longer gives is the config's again."""
    assert (await get_config(jp_fetch))["max_memory_mb"] == 8192
    write(caps_path, {"max_memory_mb": 1024, "allow_user_policies": False})
    config = await config_where(jp_fetch, lambda c: c["max_memory_mb"] == 1024)
    assert config["allow_user_policies"] is False
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("tfgpu", "api", "policies", "a.ipynb", method="PUT", body="{}")
    assert refused.value.code == 403
    write(caps_path, {})
    config = await config_where(jp_fetch, lambda c: c["max_memory_mb"] == 8192)
    assert config["allow_user_policies"] is True and config["caps_file"]["settings"] == []


# -- running kernels ---------------------------------------------------------------------------


async def kernel_view(jp_fetch, kernel_id: str) -> dict:
    return json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)


async def decision_for(jp_fetch, kernel_id: str) -> dict:
    """The first enforcement decision on the kernel (waited for)."""

    async def found():
        recent = json.loads((await jp_fetch("tfgpu", "api", "enforcement")).body)["recent"]
        mine = [d for d in recent if d["kernel_id"] == kernel_id and d["rule"] == "memory_cap"]
        return mine[0] if mine else None

    return await poll(found, timeout=60)


@pytest.mark.parametrize("caps_path", [{"enforcement": "warn", "enforcement_grace": 0}], indirect=True)
async def test_a_lowered_cap_is_enforced_on_a_running_kernel(jp_fetch, caps_path):
    # Given a kernel started under a cap of 8 GiB (the config's) that holds far less
    session = await start_session(jp_fetch, "lowered.ipynb")
    kernel_id = session["kernel"]["id"]
    assert (await kernel_view(jp_fetch, kernel_id))["restart_required"] is False
    # When the admin lowers the cap below what the kernel holds (its process's memory here)
    write(caps_path, {"enforcement": "warn", "enforcement_grace": 0, "max_memory_mb": 1})
    # Then the running kernel is held to the new cap: the enforcer acts (warn: a dry run)
    decision = await decision_for(jp_fetch, kernel_id)
    assert decision["limit_bytes"] == 1 * MiB and decision["action"] == "warn"
    # And the kernel is told a restart would give it the new cap
    assert (await kernel_view(jp_fetch, kernel_id))["restart_required"] is True


@pytest.mark.parametrize("caps_path", [{"max_memory_mb": 1}], indirect=True)
async def test_a_raised_cap_reaches_a_running_kernel_when_it_restarts(jp_fetch, caps_path):
    # Given a kernel started under a cap of 1 MiB, with enforcement off
    session = await start_session(jp_fetch, "raised.ipynb")
    kernel_id = session["kernel"]["id"]
    assert (await kernel_view(jp_fetch, kernel_id))["applied"]["memory_limit_mb"] == 1
    # When the admin raises the cap and turns enforcement on
    write(caps_path, {"max_memory_mb": 102400, "enforcement": "warn", "enforcement_grace": 0})
    # Then the running kernel is still held to the cap it started with (its frameworks were
    # set up with it), and it is told a restart gives it the new one
    decision = await decision_for(jp_fetch, kernel_id)
    assert decision["limit_bytes"] == 1 * MiB
    assert (await kernel_view(jp_fetch, kernel_id))["restart_required"] is True
    # When it is restarted, it runs with the new cap
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="{}")

    async def restarted_with_the_new_cap():
        view = await kernel_view(jp_fetch, kernel_id)
        return view["applied"]["memory_limit_mb"] == 102400 and not view["restart_required"]

    await poll(restarted_with_the_new_cap, timeout=60)

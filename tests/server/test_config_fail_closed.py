"""A wrong admin setting never leaves a server running kernels without the admin's caps.

By default the server stops with the error (a real ``jupyter server`` process, below); with
``TFGPU_ON_CONFIG_ERROR=warn`` it runs without the wrong settings and says so in GET config.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from jupyter_server.serverapp import ServerApp
from traitlets.config import Config

from jupyter_tfgpu.server.config import DEFAULT_SIMULATED_GPUS, TFGPU
from jupyter_tfgpu.server.config_check import (
    check_devices,
    environment_problems,
    on_config_error,
    setting_problems,
    without_settings,
)
from jupyter_tfgpu.server.config_files import failed_config_files
from jupyter_tfgpu.gpu import make_backend
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.kernel_helpers import poll
from tests.server_process import Servers, critical_lines

SPEC = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
# A Python config file as a new admin pastes it from JSON: `true` is a NameError in Python.
BROKEN_PY = 'c.TFGPU.max_memory_mb = 20480\nc.TFGPU.default_policy = {"memory_growth": true}\n'


@pytest.fixture
def server_in(tmp_path):
    """Make servers in tmp_path; stop whatever still runs at the end."""
    with Servers(tmp_path) as make:
        yield make


def test_a_wrong_command_line_setting_stops_the_server(server_in):
    # Given a cap on the command line whose value does not validate
    server = server_in(['--TFGPU.forced_policy={"deterministic": "yes"}', "--TFGPU.max_memory_mb=20480"])
    # When the server starts
    status = server.start().exit_status()
    # Then it exits with an error before it serves, and its log names the setting and why
    assert status != 0
    log = server.text()
    assert any("TFGPU.forced_policy" in line and "deterministic" in line for line in critical_lines(log))
    assert "is running at" not in log


def test_a_config_file_with_tfgpu_settings_that_fails_stops_the_server(server_in):
    # Given jupyter_server_config.py with a Python mistake among the admin's TFGPU settings
    server = server_in([], files={"jupyter_server_config.py": BROKEN_PY})
    # When the server starts
    status = server.start().exit_status()
    # Then it exits with an error, and its log names the file, the line and the error
    assert status != 0
    path = str(server.config_dir / "jupyter_server_config.py")
    assert any(
        path in line and "line 2" in line and "NameError" in line for line in critical_lines(server.text())
    )
    assert "is running at" not in server.text()


def test_with_the_opt_out_the_server_runs_and_reports_every_problem(server_in):
    # Given on_config_error=warn in the environment, and wrong settings of every kind
    server = server_in(
        [
            '--TFGPU.forced_policy={"deterministic": "yes"}',
            "--TFGPU.max_threads=4",
            "--TFGPU.allowed_devices=[0, 7]",
        ],
        env={"TFGPU_ON_CONFIG_ERROR": "warn"},
        files={
            "jupyter_server_config.py": BROKEN_PY,
            # jupyter_server reads only jpserver_extensions from the .d folder
            "jupyter_server_config.d/caps.json": json.dumps({"TFGPU": {"idle_timeout": 60}}),
        },
    )
    # When the server starts
    server.start().wait_until_serving()
    config = server.get("tfgpu/api/config")
    # Then GET config lists each problem
    problems = config["problems"]
    by_setting = {p["setting"]: p for p in problems if p["setting"]}
    by_file = {Path(p["file"]).name: p for p in problems if p["file"]}
    assert "deterministic" in by_setting["TFGPU.forced_policy"]["message"]
    assert "7" in by_setting["TFGPU.allowed_devices"]["message"]
    assert "NameError" in by_file["jupyter_server_config.py"]["message"]
    assert "jupyter_server_config.d" in by_file["caps.json"]["message"]
    # And the wrong setting's default applies, the good ones hold
    assert config["forced_policy"] == {}
    assert config["max_threads"] == 4
    assert config["enforcement"]["idle_timeout"] == 0.0


def test_a_failed_config_file_without_tfgpu_settings_only_warns(server_in):
    # Given a config file that fails but holds no TFGPU settings
    server = server_in([], files={"jupyter_server_config.py": "c.ServerApp.terminals_enabled = Flase\n"})
    # When the server starts
    server.start().wait_until_serving()
    # Then it runs, with a warning naming the file, and no problem in GET config
    assert server.get("tfgpu/api/config")["problems"] == []
    path = str(server.config_dir / "jupyter_server_config.py")
    assert any(line.startswith("[W ") and path in line for line in server.text().splitlines())


# -- in process: GET config ---------------------------------------------------------------------


@pytest.fixture
def tfgpu_config():
    """Wrong settings, with the opt-out: the server runs and reports them."""
    return {
        "backend": "simulated",
        "on_config_error": "warn",
        "default_policy": {"memory_growth": "yes"},
        "max_memory_mb": 1000,
        "allowed_devices": [0, "GPU-not-here"],
    }


async def test_get_config_lists_the_problems(jp_fetch):
    # Given a server started with a wrong default_policy and a GPU that is not there
    # When an admin reads GET config
    response = await jp_fetch("tfgpu", "api", "config")
    config = json.loads(response.body)
    # Then both are listed, each with its setting and why
    problems = {p["setting"]: p["message"] for p in config["problems"]}
    assert set(problems) == {"TFGPU.default_policy", "TFGPU.allowed_devices"}
    assert "memory_growth" in problems["TFGPU.default_policy"]
    assert "GPU-not-here" in problems["TFGPU.allowed_devices"]
    assert problems["TFGPU.allowed_devices"].startswith("names no GPU of this server: GPU-not-here (")
    # And the good settings hold
    assert config["max_memory_mb"] == 1000
    assert config["default_policy"] == {}
    # And the answer is the shape the shipped spec promises
    request = MockRequest("http://localhost", "get", "/tfgpu/api/config")
    body = MockResponse(response.body, status_code=response.code, content_type="application/json")
    OpenAPI.from_dict(SPEC).validate_response(request, body)


# -- the checks, one by one ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, setting, why",
    [
        ({"max_memory": 20480}, "TFGPU.max_memory", "did you mean TFGPU.max_memory_mb?"),
        ({"max_memory_mb": "lots"}, "TFGPU.max_memory_mb", "expected an int"),
        ({"default_policy": {"memory_growth": "True"}}, "TFGPU.default_policy", "memory_growth"),
        ({"enforcement": "kill"}, "TFGPU.enforcement", "'kill'"),
        ({"simulated_gpus": [{"name": "A", "count": -1}]}, "TFGPU.simulated_gpus", "count"),
    ],
)
def test_a_wrong_setting_is_named_with_why(settings, setting, why):
    # Given a wrong setting
    config = Config({"TFGPU": settings})
    # When the settings are checked
    problems = setting_problems(config)
    # Then the problem names the setting and says why
    assert [p.setting for p in problems] == [setting]
    assert why in problems[0].message


def test_a_wrong_command_line_value_says_what_was_expected():
    # Given a dict setting given as broken JSON on the command line
    app = ServerApp()
    app.parse_command_line(['--TFGPU.default_policy={"memory_growth": tru}'])
    # When the settings are checked
    problems = setting_problems(app.config)
    # Then the message says what form it takes
    assert "expected a JSON object" in problems[0].message


@pytest.mark.parametrize(
    "config, env, mode",
    [
        ({}, {}, "stop"),
        ({}, {"TFGPU_ON_CONFIG_ERROR": "warn"}, "warn"),
        ({"on_config_error": "warn"}, {}, "warn"),
        ({"on_config_error": "stop"}, {"TFGPU_ON_CONFIG_ERROR": "warn"}, "stop"),
        ({"on_config_error": "ignore"}, {"TFGPU_ON_CONFIG_ERROR": "warn"}, "stop"),
        ({}, {"TFGPU_ON_CONFIG_ERROR": "ignore"}, "stop"),
    ],
)
def test_what_happens_on_a_wrong_setting(config, env, mode, monkeypatch):
    # Given on_config_error in config and/or the environment (a wrong value means stop)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    # Then the mode is the one given, and stop when in doubt
    assert on_config_error(Config({"TFGPU": config})) == mode


def test_a_wrong_environment_variable_is_a_problem_and_its_default_is_dropped(monkeypatch):
    # Given TFGPU_BACKEND set to a backend that does not exist
    monkeypatch.setenv("TFGPU_BACKEND", "cuda")
    # When the settings are checked
    problems = environment_problems(Config())
    # Then the problem names the setting and the variable
    assert [p.setting for p in problems] == ["TFGPU.backend"]
    assert "$TFGPU_BACKEND" in problems[0].message
    # And without the wrong setting the built-in default applies
    assert TFGPU(config=without_settings(Config(), problems)).backend == "auto"


def test_a_config_file_wins_over_a_wrong_environment_variable(monkeypatch):
    # Given a wrong TFGPU_BACKEND, and the backend set in config
    monkeypatch.setenv("TFGPU_BACKEND", "cuda")
    # Then the variable does not matter
    assert environment_problems(Config({"TFGPU": {"backend": "none"}})) == []


def test_failed_config_files_are_found_with_their_error(tmp_path, monkeypatch):
    # Given a config folder with a broken .py, and a broken .json, that Jupyter's loader skips
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    (tmp_path / "jupyter_server_config.py").write_text("# the caps\n" + BROKEN_PY)
    (tmp_path / "jupyter_server_config.json").write_text('{"TFGPU": {"max_memory_mb": 1,}}')
    (tmp_path / "jupyter_config.py").write_text("# nothing set here\n")
    app = ServerApp()
    app.load_config_file()
    # When the files the server looked for are compared with the ones it loaded
    failed = {Path(f.path).name: f for f in failed_config_files([app])}
    # Then the broken ones are listed, with the line and the error; the empty one is not
    assert set(failed) == {"jupyter_server_config.py", "jupyter_server_config.json"}
    assert failed["jupyter_server_config.py"].error.startswith("line 3: NameError")
    assert failed["jupyter_server_config.py"].mentions_tfgpu
    assert "JSONDecodeError" in failed["jupyter_server_config.json"].error


def test_allowed_devices_naming_no_gpu_warn_at_start(caplog):
    # Given two simulated GPUs, read
    sampler = Sampler(make_backend("simulated", DEFAULT_SIMULATED_GPUS))
    sampler.open()
    problems = []
    uuid = sampler.devices[1].uuid
    # When allowed_devices names them and two that are not there
    with caplog.at_level(logging.WARNING):
        check_devices(TFGPU(allowed_devices=[0, uuid, 5, "GPU-gone"]), sampler, problems, logging.getLogger("t"))
    sampler.stop()
    # Then a warning names those two and the GPUs there are
    assert [p.setting for p in problems] == ["TFGPU.allowed_devices"]
    message = problems[0].message
    assert "5, GPU-gone" in message and uuid in message
    assert "GPU-gone" in caplog.text


def test_allowed_devices_are_checked_once_the_gpus_are_first_read():
    # Given a sampler that has not read its GPUs yet
    sampler = Sampler(make_backend("simulated", DEFAULT_SIMULATED_GPUS))
    problems = []
    check_devices(TFGPU(allowed_devices=[3]), sampler, problems, logging.getLogger("t"))
    assert problems == []

    # When it starts and publishes its first snapshot
    async def start_and_publish():
        sampler.start(loop=asyncio.get_running_loop())
        for _ in range(1000):
            if problems:
                break
            await asyncio.sleep(0)

    try:
        asyncio.run(start_and_publish())
    finally:
        sampler.stop()
    # Then the entry that names no GPU is reported, once
    assert [p.setting for p in problems] == ["TFGPU.allowed_devices"]


def test_policy_devices_naming_no_gpu_are_problems_too(caplog):
    # Given two simulated GPUs, read
    sampler = Sampler(make_backend("simulated", DEFAULT_SIMULATED_GPUS))
    sampler.open()
    problems = []
    settings = TFGPU(
        default_policy={"devices": [1, 9], "memory_growth": True},
        forced_policy={"devices": ["GPU-gone"]},
    )
    # When the settings' devices are checked
    with caplog.at_level(logging.WARNING):
        check_devices(settings, sampler, problems, logging.getLogger("t"))
    sampler.stop()
    # Then each policy that names a GPU that is not there is a problem naming the entries
    messages = {p.setting: p.message for p in problems}
    assert set(messages) == {"TFGPU.default_policy", "TFGPU.forced_policy"}
    assert messages["TFGPU.default_policy"].startswith("devices names no GPU of this server: 9 (")
    assert "GPU-gone" in messages["TFGPU.forced_policy"] and "GPU-gone" in caplog.text


@pytest.mark.parametrize("devices", ["auto", None, [], [0, 1]])
def test_policy_devices_that_name_no_gpu_by_design_are_fine(devices):
    # Given devices "auto", null (every GPU allowed), [] (CPU only) or GPUs that are there
    sampler = Sampler(make_backend("simulated", DEFAULT_SIMULATED_GPUS))
    sampler.open()
    problems = []
    # When they are checked
    check_devices(TFGPU(default_policy={"devices": devices}), sampler, problems, logging.getLogger("t"))
    sampler.stop()
    # Then none is a problem
    assert problems == []


@pytest.mark.parametrize(
    "tfgpu_config",
    [
        {
            "backend": "simulated",
            "on_config_error": "warn",
            "default_policy": {"devices": [0, 9]},
            "forced_policy": {"devices": ["GPU-gone"]},
        }
    ],
)
async def test_get_config_lists_policy_devices_that_name_no_gpu(jp_fetch, tfgpu_config):
    # Given a server whose default and forced policies name GPUs it does not have
    async def problems():
        config = json.loads((await jp_fetch("tfgpu", "api", "config")).body)
        return {p["setting"]: p["message"] for p in config["problems"]}

    # When an admin reads GET config, once the GPUs were first read
    listed = await poll(problems)
    # Then both are listed, naming the entries
    assert set(listed) == {"TFGPU.default_policy", "TFGPU.forced_policy"}
    assert "9" in listed["TFGPU.default_policy"] and "GPU-gone" in listed["TFGPU.forced_policy"]


def test_help_all_prints_the_tfgpu_settings_only():
    # When an admin asks for the manual
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_tfgpu", "--help-all"], capture_output=True, text=True, check=True, timeout=120
    )
    # Then it lists every TFGPU setting with its help, and no other application's options
    out = result.stdout
    for name, trait in TFGPU.class_traits(config=True).items():
        assert f"--TFGPU.{name}=" in out
        assert " ".join(trait.help.split()[:4]) in " ".join(out.split())
    assert "--ServerApp." not in out
    assert "--TFGPUApp." not in out

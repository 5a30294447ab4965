"""A hard-caps mode the admin names but this machine cannot run is a start-up problem: the server
stops (a real ``jupyter server`` process), or with on_config_error 'warn' runs with hard caps off
and lists it in GET config. The start-up log line says how caps are held."""

from __future__ import annotations

import os
import sys

import pytest

from jupyter_tfgpu.server.config_loading import caps_in_force
from jupyter_tfgpu.server.config import TFGPU
from tests.server_process import Servers, critical_lines

# No nvidia-cuda-mps-control on it, whatever this machine has.
PATH = {"PATH": os.path.dirname(sys.executable)}


@pytest.fixture
def server_in(tmp_path):
    with Servers(tmp_path) as make:
        yield make


def test_a_named_mode_that_cannot_run_here_stops_the_server(server_in):
    # Given mps named on the command line of a machine without it
    server = server_in(["--TFGPU.hard_caps=mps"], env=PATH)
    # When the server starts
    status = server.start().exit_status()
    # Then it exits before it serves, its log saying what mps lacks here
    assert status != 0
    log = server.text()
    lines = critical_lines(log)
    assert any("TFGPU.hard_caps: 'mps' cannot be used here, so hard caps are off" in line
               and "nvidia-cuda-mps-control is not on the server's PATH" in line
               for line in lines), log[-3000:]  # fmt: skip
    assert "is running at" not in log


def test_with_warn_it_runs_with_hard_caps_off_and_lists_the_problem(server_in):
    server = server_in(["--TFGPU.hard_caps=nvml"], env={**PATH, "TFGPU_ON_CONFIG_ERROR": "warn"})
    server.start().wait_until_serving()
    problems = server.get("tfgpu/api/config")["problems"]
    assert [p["setting"] for p in problems] == ["TFGPU.hard_caps"]
    assert problems[0]["message"].startswith("'nvml' cannot be used here, so hard caps are off: nvml:")
    hard_caps = server.get("tfgpu/api/status")["hard_caps"]
    assert (hard_caps["asked"], hard_caps["in_force"]) == ("nvml", "off")
    assert "hard caps off: framework settings and the enforcer hold caps" in server.text()


def test_the_caps_in_force_line_says_how_they_are_held():
    settings = TFGPU()
    values = {name: getattr(settings, name) for name in settings.trait_names(config=True)}
    line = caps_in_force(values, {"default": True}, None, "hard caps mps: a driver limit per kernel")
    assert line.endswith("policies applied at kernel start; hard caps mps: a driver limit per kernel")

"""Every number an admin (or a user's config file) sets is finite and within a bound that fits a
server: NaN, infinities and absurd sizes are wrong settings, named at start, never a
MemoryError, an enforcer that acts at once, or idle reaping quietly off."""

from __future__ import annotations

import json

import pytest
from traitlets import Float, Int
from traitlets.config import Config

from jupyter_tfgpu.server.config import MAX_HISTORY_SAMPLES, TFGPU
from jupyter_tfgpu.server.config_check import combination_problems, setting_problems
from tests.server_process import Servers, critical_lines

NUMERIC = {
    name: trait
    for name, trait in TFGPU.class_traits(config=True).items()
    if isinstance(trait, (Int, Float))
}
FLOATS = sorted(name for name, trait in NUMERIC.items() if isinstance(trait, Float))


def shown(number: float) -> str:
    """A bound as the help text writes it: 3600, not 3600.0."""
    return str(int(number)) if float(number).is_integer() else str(number)


def problems_for(name: str, value) -> list[str]:
    """The messages for one setting given as ``value``."""
    return [p.message for p in setting_problems(Config({"TFGPU": {name: value}}))]


@pytest.mark.parametrize("name", sorted(NUMERIC))
def test_every_number_has_an_upper_bound_that_its_help_names(name):
    # Given a numeric setting
    trait = NUMERIC[name]
    # Then it has an explicit upper bound, and the manual says it
    assert trait.max is not None, name
    assert shown(trait.max) in trait.help.replace(",", ""), (name, trait.help)
    # And a value past it is a wrong setting
    assert problems_for(name, trait.max * 2) != []


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "inf", "NaN"])
def test_no_float_setting_takes_nan_or_an_infinity(name, value):
    # Given NaN or an infinity, from a Python file (a float) or the command line (text)
    given = value if isinstance(value, float) else _command_line(name, value)
    # Then it is a wrong setting
    assert problems_for(name, given) != [], (name, value)


def _command_line(name, text):
    from jupyter_server.serverapp import ServerApp

    app = ServerApp()
    app.parse_command_line([f"--TFGPU.{name}={text}"])
    return app.config.TFGPU[name]


def test_nan_in_a_json_config_file_is_wrong(tmp_path):
    # Given NaN in jupyter_server_config.json (Python's json module reads it)
    from traitlets.config.loader import JSONFileConfigLoader

    (tmp_path / "jupyter_server_config.json").write_text('{"TFGPU": {"idle_timeout": NaN}}')
    config = JSONFileConfigLoader("jupyter_server_config.json", path=str(tmp_path)).load_config()
    # Then idle_timeout is a wrong setting
    assert [p.setting for p in setting_problems(config)] == ["TFGPU.idle_timeout"]


def test_a_history_longer_than_the_buffer_holds_is_wrong():
    # Given a week of history sampled every second
    settings = TFGPU(history_seconds=7 * 86400, sample_interval=1.0)
    # Then it is a problem naming history_seconds, sample_interval and the bound
    problems = combination_problems(settings)
    assert [p.setting for p in problems] == ["TFGPU.history_seconds"]
    assert "sample_interval" in problems[0].message and f"{MAX_HISTORY_SAMPLES:,}" in problems[0].message
    # And a day at 1 s, or a week at 10 s, fits
    assert combination_problems(TFGPU(history_seconds=86400, sample_interval=1.0)) == []
    assert combination_problems(TFGPU(history_seconds=7 * 86400, sample_interval=10.0)) == []


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"name": "A", "memory_gb": float("nan")}, "memory_gb"),
        ({"name": "A", "memory_gb": 1e300}, "memory_gb"),
        ({"name": "A", "count": 64}, "64 GPUs"),
    ],
)
def test_simulated_gpus_are_finite_and_at_most_64(entry, why):
    # Given simulated GPUs with a NaN or absurd memory, or more GPUs than any server has
    gpus = [entry, {"name": "B", "count": 1}]
    # Then it is a wrong setting that says why
    messages = problems_for("simulated_gpus", gpus)
    assert messages and why in messages[0]


# -- a real server -----------------------------------------------------------------------------


@pytest.fixture
def server_in(tmp_path):
    """Make servers in tmp_path; stop whatever still runs at the end."""
    with Servers(tmp_path) as make:
        yield make


@pytest.mark.parametrize(
    "arg",
    [
        "--TFGPU.sample_interval=nan",
        "--TFGPU.history_seconds=1000000000000",
        "--TFGPU.enforcement_grace=nan",
        "--TFGPU.idle_timeout=nan",
    ],
)
def test_a_nan_or_an_absurd_size_stops_the_server_naming_it(server_in, arg):
    # Given a number that no server can use
    name = arg.split("=")[0].removeprefix("--")
    server = server_in(["--TFGPU.enforcement=restart", arg])
    # When the server starts
    status = server.start().exit_status()
    # Then it stops before serving, and the log names the setting as a wrong setting
    assert status != 0
    assert any(line.split("jupyter-tfgpu: ", 1)[-1].startswith(name) for line in critical_lines(server.text()))
    assert "is running at" not in server.text()


@pytest.fixture
def tfgpu_config():
    """A week of history at 1 s, with the opt-out: the server runs and reports it."""
    return {
        "backend": "simulated",
        "on_config_error": "warn",
        "sample_interval": 1.0,
        "history_seconds": 7 * 86400,
    }


async def test_with_the_opt_out_a_history_too_long_is_listed_and_the_default_applies(jp_fetch):
    # When an admin reads GET config
    config = json.loads((await jp_fetch("tfgpu", "api", "config")).body)
    # Then the history is listed as a problem, and the built-in history applies
    assert [p["setting"] for p in config["problems"]] == ["TFGPU.history_seconds"]
    assert config["history_seconds"] == TFGPU.class_traits()["history_seconds"].default_value
    assert config["sample_interval"] == 1.0

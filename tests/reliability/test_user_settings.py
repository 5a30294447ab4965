"""Settings a user can write never lift the admin's caps.

A notebook runs as the server's user, so it can write that user's config files
(``~/.jupyter/jupyter_server_config.py``); the admin's caps are on the command line. Whatever
section name a file puts a TFGPU setting under, the command line wins; a wrong value under any
such name, or TFGPU settings under a name that is never read, stop the server like any other
wrong setting; and an error while the extension loads stops it too. Real ``jupyter server``
processes with the simulated backend; their config folder stands for ``~/.jupyter``.
"""

from __future__ import annotations

import itertools

import pytest
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from traitlets.config import Config

from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_loading import caps_in_force
from jupyter_tfgpu.server.config_sources import given_settings, misplaced_settings, reaching_sections
from tests.server_process import Servers, critical_lines

ADMIN_ARGS = ["--TFGPU.max_memory_mb=1024", "--TFGPU.enforcement=restart"]
# What a notebook writes into the user's config file to lift the admin's caps.
LIFT_CAPS = 'c.ServerApp.TFGPU.max_memory_mb = 999999\nc.ServerApp.TFGPU.enforcement = "off"\n'
# The server's own start, with the extension's services failing to build.
FAULT = """
import sys
import jupyter_tfgpu.server.app as app
def build_services(*args, **kwargs):
    raise RuntimeError("injected: the services could not be built")
app.build_services = build_services
from jupyter_server.serverapp import main
sys.exit(main())
"""


@pytest.fixture
def server_in(tmp_path):
    """Make servers in tmp_path; stop whatever still runs at the end."""
    with Servers(tmp_path) as make:
        yield make


# -- real servers ------------------------------------------------------------------------------


def test_a_users_file_cannot_lift_the_caps_under_another_section_name(server_in):
    # Given the admin's caps on the command line, and a user's file that sets them under ServerApp
    server = server_in(ADMIN_ARGS, files={"jupyter_server_config.py": LIFT_CAPS})
    # When the server starts
    server.start().wait_until_serving()
    config = server.get("tfgpu/api/config")
    # Then the command line's values are in force, and nothing is wrong
    assert config["max_memory_mb"] == 1024
    assert config["enforcement"]["action"] == "restart"
    assert config["problems"] == []
    # And the log says so, in one line
    caps = [line for line in server.text().splitlines() if "caps in force" in line]
    assert len(caps) == 1 and "max_memory_mb=1024" in caps[0] and "enforcement=restart" in caps[0]


@pytest.mark.parametrize(
    "args, files",
    [
        ([], {"jupyter_server_config.py": 'c.ServerApp.TFGPU.max_memory_mb = "bogus"\n'}),
        (["--ServerApp.TFGPU.max_memory_mb=bogus"], {}),
    ],
    ids=["file", "command line"],
)
def test_a_wrong_value_under_another_section_name_stops_the_server(server_in, args, files):
    # Given a cap that does not validate, under ServerApp.TFGPU
    server = server_in(args, files=files)
    # When the server starts
    status = server.start().exit_status()
    # Then it stops before serving, naming the setting and where it was given
    assert status != 0
    lines = critical_lines(server.text())
    assert any("TFGPU.max_memory_mb" in line and "ServerApp.TFGPU" in line for line in lines), lines
    assert "is running at" not in server.text()


def test_settings_under_a_section_that_is_never_read_stop_the_server(server_in):
    # Given a cap under the extension application's section, which TFGPU never reads
    server = server_in([], files={"jupyter_server_config.py": "c.TFGPUApp.max_memory_mb = 1024\n"})
    # When the server starts
    status = server.start().exit_status()
    # Then it stops, and says where the setting goes
    assert status != 0
    lines = critical_lines(server.text())
    assert any("TFGPUApp.max_memory_mb" in line and "c.TFGPU.max_memory_mb" in line for line in lines), lines


def test_an_override_appended_to_the_command_line_wins(server_in):
    # Given caps given twice, as when an admin appends an override to Spawner.args, and a list
    # setting given item by item
    server = server_in(
        [
            "--TFGPU.max_memory_mb=20480",
            "--TFGPU.enforcement=warn",
            "--TFGPU.allowed_devices=0",
            "--TFGPU.max_memory_mb=1024",
            "--TFGPU.enforcement=restart",
            "--TFGPU.allowed_devices=1",
        ]
    )
    # When the server starts
    server.start().wait_until_serving()
    config = server.get("tfgpu/api/config")
    # Then the last value of each single-valued setting holds; the list holds every item
    assert config["max_memory_mb"] == 1024
    assert config["enforcement"]["action"] == "restart"
    assert config["allowed_devices"] == [0, 1]
    assert config["problems"] == []


def test_an_error_while_the_extension_loads_stops_the_server(server_in):
    # Given a server whose extension fails while it builds its services
    server = server_in(ADMIN_ARGS, launcher=["-c", FAULT])
    # When it starts
    status = server.start().exit_status()
    # Then it stops rather than serve without the caps, and says why
    assert status != 0
    assert any("injected: the services could not be built" in line for line in critical_lines(server.text()))
    assert "is running at" not in server.text()


def test_with_the_opt_out_an_error_while_loading_leaves_a_server_without_the_extension(server_in):
    # Given the same failure, with on_config_error = 'warn'
    server = server_in(ADMIN_ARGS, env={"TFGPU_ON_CONFIG_ERROR": "warn"}, launcher=["-c", FAULT])
    # When it starts
    server.start().wait_until_serving()
    # Then it serves without jupyter-tfgpu, and its log says so
    assert "runs without jupyter-tfgpu" in server.text()


# -- which sections reach TFGPU ----------------------------------------------------------------


def _config_at(path: tuple[str, ...], values: dict) -> Config:
    config = Config()
    node = config
    for name in path:
        node = node[name] if name in node else node.setdefault(name, Config())
    node.update(values)
    return config


def _traitlets_reads(path: tuple[str, ...]) -> bool:
    """Whether traitlets hands a value at ``path`` to a TFGPU made with the server as parent."""
    app = ServerApp(config=_config_at(path, {"max_memory_mb": 7}))
    return TFGPU(parent=app).max_memory_mb == 7


# Every class a section could be named after: the server's, the extensions', TFGPU's.
NAMES = sorted(
    {c.__name__ for cls in (ServerApp, ExtensionApp, TFGPU) for c in cls.mro() if hasattr(c, "section_names")}
    | {"LabApp", "TFGPUApp", "KernelManager"}
)
PATHS = [(name,) for name in NAMES] + list(itertools.product(NAMES, repeat=2))


def test_the_sections_that_reach_tfgpu_are_exactly_those_traitlets_reads():
    # Given every section name (and every pair) a setting could be put under
    reaching = set(reaching_sections(ServerApp()))
    # Then traitlets hands TFGPU a value at exactly the paths listed
    assert {path for path in PATHS if _traitlets_reads(path)} == reaching
    assert ("TFGPU",) in reaching and ("ServerApp", "TFGPU") in reaching


def test_without_a_command_line_the_file_value_traitlets_would_pick_is_given():
    # Given a different value at every section that reaches TFGPU
    sections = reaching_sections(ServerApp())
    config = Config()
    for n, path in enumerate(sections):
        config.merge(_config_at(path, {"max_memory_mb": 100 + n}))
    app = ServerApp(config=config)
    # Then the value given is the one traitlets would use (the last section in its order)
    assert given_settings(app).config.TFGPU.max_memory_mb == TFGPU(parent=app).max_memory_mb == 100 + len(sections) - 1


@pytest.mark.parametrize("path", reaching_sections(ServerApp()), ids=".".join)
def test_the_command_line_wins_over_every_section_of_every_file(path, tmp_path, monkeypatch):
    # Given a user's file with a cap under one section that reaches TFGPU
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    assignment = "c." + ".".join(path) + ".max_memory_mb = 999999\n"
    (tmp_path / "jupyter_server_config.py").write_text(assignment)
    # When the server reads its command line and its files, as it does at start
    app = ServerApp()
    app.parse_command_line(["--TFGPU.max_memory_mb=1024"])
    app.load_config_file()
    given = given_settings(app)
    # Then the command line's value is the one given
    assert given.config.TFGPU.max_memory_mb == "1024"
    assert given.origins["max_memory_mb"] == "TFGPU.max_memory_mb"
    assert "max_memory_mb" in given.command_line


def test_a_command_line_value_under_any_section_wins_over_the_files(tmp_path, monkeypatch):
    # Given a cap in a file, and on the command line under ServerApp.TFGPU
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    (tmp_path / "jupyter_server_config.py").write_text("c.TFGPU.max_memory_mb = 999999\n")
    app = ServerApp()
    app.parse_command_line(["--ServerApp.TFGPU.max_memory_mb=1024"])
    app.load_config_file()
    # Then the command line's is the one given
    assert given_settings(app).config.TFGPU.max_memory_mb == "1024"


def test_a_repeated_single_value_is_the_last_and_a_repeated_list_its_items():
    # Given settings repeated on the command line
    app = ServerApp()
    app.parse_command_line(
        ["--TFGPU.max_memory_mb=1", "--TFGPU.max_memory_mb=2", "--TFGPU.allowed_devices=0", "--TFGPU.allowed_devices=1"]
    )
    # When the settings are given to TFGPU
    settings = TFGPU(config=given_settings(app).config)
    # Then the single value is the last one, and the list has both items
    assert settings.max_memory_mb == 2
    assert settings.allowed_devices == [0, 1]


@pytest.mark.parametrize(
    "path, name",
    [
        (("TFGPUApp",), "max_memory_mb"),
        (("ServerApp", "TFGPUApp"), "max_memory_mb"),
        (("LabApp", "TFGPU"), "enforcement"),
        (("TFGPU", "TFGPU"), "max_memory_mb"),
        (("tfgpu",), "max_memory_mb"),
        (("ServerApp", "Tfgpu"), "idle_timeout"),
        (("TFGPUApp",), "max_memory"),
    ],
    ids=lambda p: ".".join(p) if isinstance(p, tuple) else p,
)
def test_settings_under_a_tfgpu_section_that_is_not_read_are_problems(path, name):
    # Given a setting under a section named like TFGPU that TFGPU never reads
    config = _config_at(path, {name: 1})
    # When the sections are checked
    problems = misplaced_settings(config, reaching_sections(ServerApp()))
    # Then it is a problem that names it and says where TFGPU settings go
    assert [p.setting for p in problems] == [".".join((*path, name))]
    assert "c.TFGPU." in problems[0].message


def test_the_extension_applications_own_settings_are_not_problems():
    # Given the extension application's own settings, and settings in sections that are read
    config = Config({"TFGPUApp": {"log_level": "DEBUG", "open_browser": False}})
    config.merge(_config_at(("ServerApp", "TFGPU"), {"max_memory_mb": 1}))
    config.merge(_config_at(("ServerApp",), {"jpserver_extensions": {"jupyter_tfgpu": True}}))
    # Then none is a problem
    assert misplaced_settings(config, reaching_sections(ServerApp())) == []


def test_the_caps_in_force_are_said_in_one_line():
    # Given caps, policies, enforcement and idle reaping
    settings = TFGPU(
        max_memory_mb=20480,
        allowed_devices=[0, 1],
        default_policy={"memory_growth": True},
        forced_policy={"deterministic": True},
        enforcement="restart",
        enforcement_grace=60,
        idle_timeout=3600,
    )
    values = {name: getattr(settings, name) for name in settings.trait_names(config=True)}
    # When they are described for the start-up log
    line = caps_in_force(values, {"default": True, "reason": None})
    # Then each is named with its value
    for part in (
        "max_memory_mb=20480",
        "allowed_devices=[0, 1]",
        'default_policy={"memory_growth": true}',
        'forced_policy={"deterministic": true}',
        "enforcement=restart after 60 s",
        "idle reaping: restart after 3600 s",
    ):
        assert part in line, (part, line)
    # And with nothing set, it says what is off
    defaults = TFGPU()
    values = {name: getattr(defaults, name) for name in defaults.trait_names(config=True)}
    line = caps_in_force(values, {"default": False, "reason": "TFGPU.use_provisioner is False"})
    assert "max_memory_mb=none" in line and "allowed_devices=all" in line
    assert "enforcement=off" in line and "idle reaping off" in line
    assert "not applied to kernels: TFGPU.use_provisioner is False" in line

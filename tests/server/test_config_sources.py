"""Every TFGPU setting can be given in every way the docs name, through Jupyter's own loaders.

Command line as jupyter_server parses it (also as JupyterHub's Spawner.args and Kubernetes
``args`` pass it: dicts and lists as JSON), ``jupyter_server_config.py`` and ``.json``, and the
environment where a setting's help names a variable. The settings lines of the docs and of the
shipped examples are read out of the files themselves, so they cannot drift from what works.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from jupyter_server.serverapp import ServerApp
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, Union
from traitlets.config import Config
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from jupyter_tfgpu.server.config import ENVIRONMENT_VARIABLES, TFGPU
from jupyter_tfgpu.server.config_check import setting_problems
from jupyter_tfgpu.server.config_sources import given_settings
from jupyter_tfgpu.server.app import TFGPUApp

ROOT = Path(__file__).resolve().parents[2]

# One value per setting, each different from its default.
VALUES = {
    "backend": "simulated",
    "sample_interval": 2.5,
    "history_seconds": 600,
    "nvml_budget": 0.05,
    "slow_interval": 10.0,
    "process_interval": 7.5,
    "pcie_interval": 3.0,
    "simulated_gpus": [{"name": "Simulated A100 80GB", "memory_gb": 80, "count": 4}],
    "default_policy": {"memory_growth": True, "devices": "auto", "gpu_count": 1},
    "max_memory_mb": 20480,
    "allowed_devices": [0, "GPU-0e5d1c2a-aaaa-bbbb-cccc-000000000001"],
    "force_memory_growth": True,
    "allow_user_policies": False,
    "policy_store_path": "/srv/jupyter/tfgpu/policies.json",
    "forced_policy": {"deterministic": True, "log_placement": False},
    "max_threads": 8,
    "placement_strategy": "pack",
    "use_provisioner": False,
    "keep_hub_token_in_kernels": True,
    "enforcement": "restart",
    "enforcement_grace": 60.0,
    "idle_timeout": 3600.0,
    "idle_min_memory_mb": 1024,
    "idle_action": "shutdown",
    "max_actions_per_hour": 5,
    "caps_file": "/etc/jupyter/tfgpu-caps.json",
    "hard_caps": "auto",
    "on_config_error": "warn",
}
# The parsers a --TFGPU.x=... argument meets: jupyter_server's (jupyter server, jupyter lab,
# jupyterhub-singleuser: TFGPU unknown to it, the value deferred) and this package's own
# (python -m jupyter_tfgpu: TFGPU among its classes, the value parsed at once).
PARSERS = [ServerApp, TFGPUApp]


def command_line_text(value):
    """The value as an admin writes it after ``--TFGPU.name=``: JSON for dicts, lists, bools."""
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


def from_command_line(args, parser=ServerApp):
    """The TFGPU settings that a server started with ``args`` builds."""
    app = parser()
    app.parse_command_line(args)
    return TFGPU(config=app.config)


def config_of(args, parser=ServerApp):
    """The config a server parses out of ``args``."""
    app = parser()
    app.parse_command_line(args)
    return app.config


def expected(name):
    """The value a setting holds when set directly."""
    return getattr(TFGPU(**{name: VALUES[name]}), name)


def test_the_table_covers_every_setting_and_every_type():
    """A new setting must be added to VALUES, so it is tested in every way."""
    # Given every configurable TFGPU trait
    traits = TFGPU.class_traits(config=True)
    # Then each has a value here, different from its default
    assert set(VALUES) == set(traits)
    defaults = TFGPU()
    for name in traits:
        assert expected(name) != getattr(defaults, name), name
    # And the settings span every trait type the docs promise work everywhere
    kinds = {type(t) for t in traits.values()} | {type(t._trait) for t in traits.values() if hasattr(t, "_trait")}
    for kind in (Enum, Float, Int, Bool, Dict, List, Unicode, Union):
        assert any(issubclass(k, kind) for k in kinds if k is not None), kind


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", sorted(VALUES))
def test_command_line(name, parser):
    # Given --TFGPU.name=value, dicts and lists as JSON
    args = [f"--TFGPU.{name}={command_line_text(VALUES[name])}"]
    # When the server's command line is parsed and the settings built
    settings = from_command_line(args, parser)
    # Then the setting holds the value
    assert getattr(settings, name) == expected(name)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_python_config_file(name, tmp_path):
    # Given c.TFGPU.name = value in jupyter_server_config.py
    (tmp_path / "jupyter_server_config.py").write_text(f"c.TFGPU.{name} = {VALUES[name]!r}\n")
    # When Jupyter's loader reads it
    config = PyFileConfigLoader("jupyter_server_config.py", path=str(tmp_path)).load_config()
    # Then the setting holds the value
    assert getattr(TFGPU(config=config), name) == expected(name)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_json_config_file(name, tmp_path):
    # Given {"TFGPU": {name: value}} in jupyter_server_config.json
    (tmp_path / "jupyter_server_config.json").write_text(json.dumps({"TFGPU": {name: VALUES[name]}}))
    # When Jupyter's loader reads it
    config = JSONFileConfigLoader("jupyter_server_config.json", path=str(tmp_path)).load_config()
    # Then the setting holds the value
    assert getattr(TFGPU(config=config), name) == expected(name)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize(
    "args, name, value",
    [
        # The key=value form, values read as JSON or Python literals.
        (["--TFGPU.default_policy", "memory_growth=True"], "default_policy", {"memory_growth": True}),
        (["--TFGPU.default_policy=memory_growth=true"], "default_policy", {"memory_growth": True}),
        (
            ["--TFGPU.default_policy", "memory_growth=true", "--TFGPU.default_policy", "devices=[0, 1]"],
            "default_policy",
            {"memory_growth": True, "devices": [0, 1]},
        ),
        (
            ["--TFGPU.forced_policy=allocator=cuda_malloc_async", "--TFGPU.forced_policy=deterministic=true"],
            "forced_policy",
            {"allocator": "cuda_malloc_async", "deterministic": True},
        ),
        # Python literals, as traitlets always took them.
        (["--TFGPU.default_policy={'memory_growth': True}"], "default_policy", {"memory_growth": True}),
        # Lists item by item, and None.
        (["--TFGPU.allowed_devices=0", "--TFGPU.allowed_devices=GPU-abc"], "allowed_devices", [0, "GPU-abc"]),
        (["--TFGPU.allowed_devices=1"], "allowed_devices", [1]),
        (["--TFGPU.allowed_devices=None"], "allowed_devices", None),
        (["--TFGPU.allowed_devices=[]"], "allowed_devices", []),
        (
            ['--TFGPU.simulated_gpus={"name": "A", "count": 1}', '--TFGPU.simulated_gpus={"name": "B", "count": 2}'],
            "simulated_gpus",
            [{"name": "A", "count": 1}, {"name": "B", "count": 2}],
        ),
        (["--TFGPU.max_memory_mb=None"], "max_memory_mb", None),
    ],
)
def test_command_line_forms(args, name, value, parser):
    # Given another form an admin may use on the command line
    # When the server's command line is parsed
    config = config_of(args, parser)
    # Then the setting is valid and holds the value
    assert setting_problems(config) == []
    assert getattr(TFGPU(config=config), name) == value


SINGLE_VALUED = sorted(
    name for name, trait in TFGPU.class_traits(config=True).items() if not isinstance(trait, (List, Dict))
)


@pytest.mark.parametrize("last", ["value", "default"])
@pytest.mark.parametrize("name", SINGLE_VALUED)
def test_a_single_valued_setting_given_twice_takes_the_last_value(name, last):
    # Given a setting given twice, as when an admin appends an override to Spawner.args
    values = [command_line_text(getattr(TFGPU(), name)), command_line_text(VALUES[name])]
    if last == "default":
        values.reverse()
    app = ServerApp()
    app.parse_command_line([f"--TFGPU.{name}={value}" for value in values])
    # When the server reads its settings
    given = given_settings(app)
    # Then it is no problem, and the setting holds the last value
    assert setting_problems(given.config) == [] and setting_problems(app.config) == []
    wanted = expected(name) if last == "value" else getattr(TFGPU(), name)
    assert getattr(TFGPU(config=given.config), name) == wanted


@pytest.mark.parametrize("name, variable", sorted(ENVIRONMENT_VARIABLES.items()))
def test_environment(name, variable, monkeypatch, tmp_path):
    # Given the variable the setting's help names
    trait = TFGPU.class_traits()[name]
    assert variable in trait.help
    monkeypatch.setenv(variable, VALUES[name])
    # Then it sets the default
    assert getattr(TFGPU(), name) == VALUES[name]
    # And a config file still wins over it
    (tmp_path / "jupyter_server_config.py").write_text(f"c.TFGPU.{name} = {trait.default_value!r}\n")
    config = PyFileConfigLoader("jupyter_server_config.py", path=str(tmp_path)).load_config()
    assert getattr(TFGPU(config=config), name) == trait.default_value


def test_no_other_setting_reads_the_environment():
    """A help text that names an environment variable must have it in ENVIRONMENT_VARIABLES."""
    for name, trait in TFGPU.class_traits(config=True).items():
        for variable in re.findall(r"\bTFGPU_[A-Z_]+", trait.help):
            assert ENVIRONMENT_VARIABLES.get(name) == variable, name


# -- the lines the docs and the shipped examples use ------------------------------------------


def hub_args():
    """c.Spawner.args of docs/examples/jupyterhub_config.py, loaded as JupyterHub loads it."""
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(ROOT / "docs" / "examples")).load_config()
    return list(config.Spawner.args)


def kubernetes_args():
    """hub.config.KubeSpawner.args of docs/examples/z2jh-values.yaml."""
    values = yaml.safe_load((ROOT / "docs" / "examples" / "z2jh-values.yaml").read_text())
    return list(values["hub"]["config"]["KubeSpawner"]["args"])


def snippets_in_docs():
    """Every `--TFGPU.x=value` and `c.TFGPU.x = value` in the docs' text and code blocks."""
    found = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        text = page.read_text()
        spans = re.findall(r"`([^`\n]+)`", text) + [
            line for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) for line in block.splitlines()
        ]
        for span in spans:
            span = span.strip()
            # An item of a Python list of arguments (Spawner.args): the string it holds.
            item = re.fullmatch(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?\s*(#.*)?""", span)
            if re.match(r"c\.TFGPU\.[a-z_]+\s*=", span):
                found.append((page.name, "py", span))
            elif re.search(r"--TFGPU\.[a-z_]+=", span):
                for token in [ast.literal_eval(item[1])] if item else shlex.split(span):
                    if re.match(r"--TFGPU\.[a-z_]+=", token):
                        found.append((page.name, "cli", token))
    return found


@pytest.mark.parametrize("source, args", [("jupyterhub_config.py", hub_args()), ("z2jh-values.yaml", kubernetes_args())])
def test_spawner_args_of_the_examples(source, args):
    # Given the exact args the JupyterHub and Kubernetes examples put on each server's command line
    assert any(a.startswith("--TFGPU.") for a in args), source
    # When a single-user server parses them
    config = config_of(args)
    # Then every TFGPU setting is valid, and the caps hold the values given
    assert setting_problems(config) == []
    settings = TFGPU(config=config)
    assert settings.max_memory_mb == 20480
    assert settings.force_memory_growth is True
    assert settings.enforcement == "restart"


@pytest.mark.parametrize("name", ["team_server_config.py"])
def test_config_file_examples(name):
    # Given a shipped example config file
    config = PyFileConfigLoader(name, path=str(ROOT / "docs" / "examples")).load_config()
    # Then Jupyter loads it and every TFGPU setting in it is valid
    assert config.TFGPU
    assert setting_problems(config) == []


def test_binder_config_file():
    # Given the Binder demo's config file
    config = PyFileConfigLoader("jupyter_server_config.py", path=str(ROOT / "binder")).load_config()
    # Then every TFGPU setting in it is valid
    assert config.TFGPU
    assert setting_problems(config) == []


SNIPPETS = snippets_in_docs()


def test_the_docs_have_settings_lines():
    """The extraction below finds the docs' lines (else the tests after it check nothing)."""
    kinds = {kind for _, kind, _ in SNIPPETS}
    assert kinds == {"py", "cli"}


@pytest.mark.parametrize("page, kind, snippet", SNIPPETS, ids=[f"{p}:{s}" for p, _, s in SNIPPETS])
def test_settings_lines_in_the_docs(page, kind, snippet, tmp_path):
    # Given a settings line from the docs, copied as an admin would
    if kind == "py":
        (tmp_path / "jupyter_server_config.py").write_text(snippet + "\n")
        config = PyFileConfigLoader("jupyter_server_config.py", path=str(tmp_path)).load_config()
    else:
        config = config_of([snippet])
    # Then Jupyter loads it and the setting is valid
    assert config.TFGPU
    assert setting_problems(config) == []
    TFGPU(config=Config(config))

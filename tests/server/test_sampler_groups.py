"""The sampling groups' table is the one place a group is named: its setting, its backend
method, its budget share and its fields all come from its row."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from jupyter_tfgpu.gpu.backend import Backend
from jupyter_tfgpu.gpu.nvml import NvmlBackend
from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.gpu.simulated import SimulatedBackend
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.sampling import budget
from jupyter_tfgpu.server.sampling.groups import SAMPLING_GROUPS
from jupyter_tfgpu.server.sampling.sampler import Sampler
from jupyter_tfgpu.server.services import SAMPLING

PACKAGE = Path(__file__).resolve().parents[2] / "jupyter_tfgpu"
ROWS = pytest.mark.parametrize("row", SAMPLING_GROUPS, ids=[row.name for row in SAMPLING_GROUPS])


@ROWS
def test_each_group_has_its_interval_setting_with_the_same_default(row):
    """The row's setting is a TFGPU setting an admin can set, and the defaults agree."""
    traits = TFGPU.class_traits(config=True)

    assert row.setting in traits
    assert traits[row.setting].default_value == row.default_interval


@ROWS
def test_each_group_is_read_by_a_backend_method(row):
    """The row's method is on the Backend protocol and on every backend."""
    for backend in (Backend, NvmlBackend, SimulatedBackend):
        assert inspect.isfunction(getattr(backend, row.read, None)), (backend, row.read)


@ROWS
def test_each_group_fills_snapshot_fields(row):
    """The fields a group nulls when it fails are fields of a GPU's reading."""
    assert row.fields
    assert set(row.fields) <= {f.name for f in dataclasses.fields(GpuReading)}


@ROWS
def test_the_settings_reach_the_sampler_through_the_table(row):
    """services.SAMPLING maps each group's setting to the Sampler's argument the row names,
    and the Sampler plans that group with it (its setting's default where not given)."""
    # Given
    given = Sampler(None, **{row.argument: 7.5})
    defaulted = Sampler(None)

    # Then
    assert SAMPLING[row.setting] == (row.argument, row.in_config)
    assert given.stats[row.name].desired == 7.5
    assert defaulted.stats[row.name].desired == row.default_interval


def test_the_budget_plans_exactly_the_groups_of_the_table():
    """Shares add up to the whole budget; a plan and GET status name the table's groups."""
    names = [row.name for row in SAMPLING_GROUPS]
    desired = {row.name: row.default_interval for row in SAMPLING_GROUPS}

    planned = budget.plan({name: 0.001 for name in names}, desired, 0.02)

    assert sum(row.share for row in SAMPLING_GROUPS) == pytest.approx(1.0)
    assert list(planned.intervals) == names
    assert list(Sampler(None).describe()["groups"]) == names


def test_no_other_module_names_a_group():
    """No module of the sampling package but the table, and not the services' wiring, spells a
    group's name, setting or backend method: they read the table."""
    spelled = {
        name
        for row in SAMPLING_GROUPS
        for name in (row.name, row.setting, row.read)
    }
    sampling = sorted((PACKAGE / "server" / "sampling").glob("*.py"))
    files = [*sampling, PACKAGE / "server" / "services.py"]

    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}"
        for path in files
        if path.name != "groups.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in spelled
    ]

    assert found == []

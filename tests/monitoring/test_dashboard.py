"""The shipped Grafana dashboard: cluster -> host -> GPU -> user -> notebook, on valid PromQL.

Grafana itself is not run here; the end-to-end test (test_prometheus.py) evaluates every query of
the dashboard on a real Prometheus. This file checks the model: its layout, that every panel
queries the chosen data source, that every query parses (promtool) and names only series the
servers export or the shipped rules record.
"""

from __future__ import annotations

import json
import re

import pytest

from jupyter_tfgpu.server.metrics import SERIES
from tests.monitoring import promql

DASHBOARD = json.loads(promql.DASHBOARD.read_text())
PANELS = [p for p in promql.panels(DASHBOARD) if p["type"] != "row"]


def test_the_rows_go_from_the_cluster_down_to_the_notebook():
    """Cluster, hosts, GPUs, users, notebooks, in that order, each a row of panels."""
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Cluster", "Hosts", "GPUs", "Users", "Notebooks"]


def test_the_variables_filter_by_host_and_user_and_pick_the_data_source():
    """A Prometheus data source variable, then host and user, each with "All"."""
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("hostname", "user"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_the_import_asks_for_the_prometheus_data_source():
    """Grafana's import shows a data source picker for each of __inputs and puts the choice
    where ${DS_PROMETHEUS} is: the data source variable starts on the one picked."""
    inputs = DASHBOARD["__inputs"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    assert {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"} in (
        DASHBOARD["__requires"]
    )
    variable = next(v for v in DASHBOARD["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"
    # And nothing else refers to an input the import would not fill
    text = promql.DASHBOARD.read_text()
    assert set(re.findall(r"\$\{(DS_[A-Z_]+)\}", text)) == {"DS_PROMETHEUS"}


def test_every_panel_queries_the_chosen_data_source_and_has_a_unique_id():
    """No data source is hard-wired: an imported dashboard works with any Prometheus."""
    ids = [p["id"] for p in promql.panels(DASHBOARD)]
    assert len(ids) == len(set(ids))
    for panel in PANELS:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()


def test_the_panels_fit_the_grid_without_overlapping():
    """24 columns; no two panels share a cell."""
    taken: set[tuple[int, int]] = set()
    for panel in promql.panels(DASHBOARD):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_there_is_a_usage_table_per_user():
    """A table of each user's memory now and GiB-hours and busy hours over a day and a week."""
    (table,) = [p for p in PANELS if p["title"] == "Usage, by user"]
    assert table["type"] == "table"
    exprs = " ".join(t["expr"] for t in table["targets"])
    for recorded in (
        "user:tfgpu_kernel_gpu_memory_bytes:sum",
        "user:tfgpu_kernel_gpu_memory_byte_seconds:increase1d",
        "user:tfgpu_kernel_gpu_memory_byte_seconds:increase7d",
        "user:tfgpu_kernel_gpu_busy_seconds:increase1d",
        "user:tfgpu_kernel_gpu_busy_seconds:increase7d",
    ):
        assert recorded in exprs
    assert all(t.get("format") == "table" and t.get("instant") for t in table["targets"])


def test_every_query_names_only_series_that_exist():
    """Series of the servers, series the shipped rules record, and Prometheus's ALERTS."""
    known = {s.name for s in SERIES} | promql.recorded_names(promql.load_rules()) | {"ALERTS"}
    functions = {"count", "sum", "max", "min", "by", "or", "vector", "label_replace", "group"}
    for expression in promql.dashboard_expressions(DASHBOARD):
        # Names outside quotes, not followed by "(" (a function) or "=" (a label).
        bare = re.sub(r'"[^"]*"', '""', expression.expr)
        names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?=\s*[{\[)\s]|$)", bare))
        unknown = {n for n in names if ":" in n or n.startswith(("tfgpu_", "ALERTS"))} - known
        assert not unknown, (expression.where, unknown)
        assert names - functions, expression.where


def test_every_query_parses(tmp_path):
    """promtool accepts each query (as a recording rule's expression), variables as "All"."""
    said = promql.check_syntax(promql.dashboard_expressions(DASHBOARD), tmp_path)
    assert not said, said


@pytest.mark.parametrize("unit", ["bytes", "percentunit"])
def test_memory_is_in_bytes_and_shares_in_percent(unit):
    """Grafana's units, so 1.5 GiB reads as such: every memory panel in bytes, utilization in %."""
    found = [p for p in PANELS if p["fieldConfig"]["defaults"].get("unit") == unit]
    assert found

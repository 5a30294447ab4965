"""Every PromQL expression the product ships or shows, and Prometheus's own tools to check them.

The expressions come from the shipped rules (``jupyter_tfgpu/prometheus/tfgpu-rules.yaml``),
the shipped Grafana dashboard (its panels' queries and its variables' ``label_values``), and the
docs: ```` ```promql ```` blocks and code spans that query a series of the product, a recorded
series or dcgm-exporter's (``DCGM_...``) with a function, a selector or a range.

Prometheus and promtool are Debian's (``scripts/install-prometheus.sh``); without them the tests
that need them are skipped with the reason, except in CI (env ``CI`` set), where that fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jupyter_tfgpu.server.metrics import SERIES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "jupyter_tfgpu" / "prometheus"
RULES = SHIPPED / "tfgpu-rules.yaml"
DASHBOARD = SHIPPED / "tfgpu-dashboard.json"
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")

# What the dashboard's variables stand for when it shows everything ("All").
GRAFANA_ALL = ".*"


def missing(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where Prometheus must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require(tool: Path) -> Path:
    """The tool, or a skip (a failure in CI) that says how to install it."""
    if not os.access(tool, os.X_OK):
        missing(f"{tool} is missing: run `bash scripts/install-prometheus.sh`")
    return tool


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run promtool; its output (stdout and stderr) is in ``.stdout``."""
    return subprocess.run(
        [str(require(PROMTOOL)), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


# -- the rules ---------------------------------------------------------------------------------


def load_rules() -> dict[str, Any]:
    """The shipped rules file, parsed."""
    return yaml.safe_load(RULES.read_text())


def all_rules(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule of every group."""
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The alerting rule ``name``."""
    (found,) = [rule for rule in all_rules(document) if rule.get("alert") == name]
    return found


def retune(
    document: dict[str, Any], name: str, numbers: dict[str, str], for_: str | None = None
) -> dict[str, Any]:
    """A copy of the rules with alert ``name``'s numbers (and ``for``) rewritten, as an admin
    would: each old number must be in the expression, and only numbers change."""
    tuned = copy.deepcopy(document)
    rule = alert(tuned, name)
    for old, new in numbers.items():
        assert re.fullmatch(r"[-\d.^* a-z]+", old) and re.fullmatch(r"[-\d.^* a-z]+", new)
        assert rule["expr"].count(old) == 1, f"{old!r} is not once in {name}'s expression"
        rule["expr"] = rule["expr"].replace(old, new)
    if for_ is not None:
        rule["for"] = for_
    return tuned


def fast_rules() -> dict[str, Any]:
    """The shipped rules with the numbers the end-to-end test runs them with: seconds instead of
    minutes and hours, 0.25 GiB for the idle kernel, and the thresholds of the busy GPU and the
    lost GPU below anything a GPU reports, so that every alert's expression has data to return."""
    rules = load_rules()
    rules = retune(
        rules, "TFGPUKernelIdleHoldingMemory", {"1 * 2^30": "0.25 * 2^30", "3600": "2"}, "3s"
    )
    rules = retune(rules, "TFGPUKernelOverMemoryCap", {}, "2s")
    rules = retune(rules, "TFGPUBusyWithNotebooksWaiting", {"0.95": "-1"}, "1s")
    rules = retune(rules, "TFGPULost", {"0": "-1"}, "1s")
    rules = retune(rules, "TFGPUExtensionNotLoaded", {}, "1s")
    for group in rules["groups"]:
        if "interval" in group:
            group["interval"] = "1s"
    return rules


def recorded_names(document: dict[str, Any]) -> set[str]:
    """The series the recording rules make."""
    return {rule["record"] for rule in all_rules(document) if "record" in rule}


# -- the expressions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A PromQL expression and where it was written."""

    where: str
    expr: str


def rule_expressions(document: dict[str, Any]) -> list[Expression]:
    """Every rule's expression."""
    return [
        Expression(f"rules: {rule.get('record') or rule.get('alert')}", rule["expr"])
        for rule in all_rules(document)
    ]


def with_variables(expr: str, values: dict[str, str]) -> str:
    """A Grafana query with its variables (``$name``, ``${name}``) replaced."""
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value)
        expr = re.sub(rf"\${re.escape(name)}\b", value, expr)
    assert "$" not in expr.replace("$1", ""), f"a variable left in {expr}"
    return expr


def label_values_query(query: str) -> str:
    """Grafana's ``label_values(selector, label)`` as the PromQL that answers it."""
    match = re.fullmatch(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)", query.strip())
    assert match, f"not a label_values() query: {query}"
    return f"group by ({match['label']}) ({match['selector']})"


def dashboard_expressions(dashboard: dict[str, Any] | None = None) -> list[Expression]:
    """Every query of the dashboard, its variables meaning "All"."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    variables = {v["name"]: GRAFANA_ALL for v in dashboard["templating"]["list"]}
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = (
                variable["query"]["query"]
                if isinstance(variable["query"], dict)
                else variable["query"]
            )
            found.append(
                Expression(
                    f"dashboard variable {variable['name']}",
                    with_variables(label_values_query(query), variables),
                )
            )
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append(
                Expression(
                    f"dashboard panel {panel['title']!r} {target['refId']}",
                    with_variables(target["expr"], variables),
                )
            )
    return found


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


PROMQL_FENCE = re.compile(r"^```promql[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
ANY_FENCE = re.compile(r"^[ \t]*(```+|~~~+).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)


def queried_names() -> set[str]:
    """Names whose use in a code span, with a function, selector or range, makes it a query."""
    return {s.name for s in SERIES} | recorded_names(load_rules()) | {"ALERTS"}


def docs_expressions(pages: list[Path] | None = None) -> list[Expression]:
    """The PromQL of the docs: ```` ```promql ```` blocks (one expression per block), and code
    spans that query a series of the product, a recorded one or a ``DCGM_`` one."""
    pages = pages if pages is not None else [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    names = queried_names()
    found = []
    for page in pages:
        text = page.read_text()
        where = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        for match in PROMQL_FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Expression(f"{where}:{line}", match["body"].strip()))
        outside = ANY_FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
        for match in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", outside):
            span = match[1]
            words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", span))
            if re.search(r"[({\[]", span) and (
                words & names or any(w.startswith("DCGM_") for w in words)
            ):
                line = outside.count("\n", 0, match.start()) + 1
                found.append(Expression(f"{where}:{line}", span))
    return found


def check_syntax(expressions: list[Expression], folder: Path) -> str:
    """promtool's verdict on the expressions, each written as a recording rule ("" when valid)."""
    rules = {
        "groups": [
            {
                "name": "syntax",
                "rules": [
                    {"record": f"check:expression:n{n}", "expr": e.expr}
                    for n, e in enumerate(expressions)
                ],
            }
        ]
    }
    path = folder / "expressions.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = promtool("check", "rules", str(path))
    if result.returncode == 0:
        return ""
    return result.stdout + "\n" + "\n".join(f"n{n}: {e.where}" for n, e in enumerate(expressions))

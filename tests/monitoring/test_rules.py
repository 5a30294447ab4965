"""The shipped Prometheus rules: valid, unit-tested alert by alert, named by convention, tunable.

``promtool check rules`` and ``promtool test rules tests/monitoring/rules_test.yaml`` run on the
shipped file as it is; the tests here also hold what those cannot: that every alert has a case
that fires and one that must not, that recording rules are named ``level:metric:operations``
after a real series, and that an admin can change a threshold by changing a number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from jupyter_tfgpu.server.metrics import SERIES
from tests.monitoring import promql

UNIT_TESTS = Path(__file__).with_name("rules_test.yaml")
ALERTS = (
    "TFGPUKernelIdleHoldingMemory",
    "TFGPUKernelOverMemoryCap",
    "TFGPUBusyWithNotebooksWaiting",
    "TFGPULost",
    "TFGPUExtensionNotLoaded",
)


def test_promtool_checks_the_shipped_rules():
    """``promtool check rules`` passes on the file as shipped."""
    result = promql.promtool("check", "rules", str(promql.RULES))
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(promql.all_rules(promql.load_rules()))} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    """Every alert and recording rule against series written by hand (rules_test.yaml)."""
    result = promql.promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_fail_when_a_rule_is_wrong(tmp_path):
    """The unit tests catch a wrong threshold: with N one byte lower, bob's 1 GiB kernel fires."""
    # Given the rules with the idle alert's N lowered by a byte, and the unit tests pointing there
    wrong = promql.retune(
        promql.load_rules(), "TFGPUKernelIdleHoldingMemory", {"1 * 2^30": "1 * 2^30 - 1"}
    )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(wrong, sort_keys=False))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    # Then promtool fails on it, naming the alert
    result = promql.promtool("test", "rules", str(tmp_path / "rules_test.yaml"))
    assert result.returncode != 0
    assert "TFGPUKernelIdleHoldingMemory" in result.stdout and 'user="bob"' in result.stdout


def test_the_alerts_are_the_five_of_the_product():
    """A kernel idle on memory, over its cap, a busy GPU with notebooks waiting, a lost GPU, a
    server running without the extension."""
    names = [r["alert"] for r in promql.all_rules(promql.load_rules()) if "alert" in r]
    assert tuple(names) == ALERTS


def test_every_alert_has_a_case_that_fires_and_one_that_must_not():
    """In rules_test.yaml each alert is expected to fire at one time and be silent at another."""
    cases = [
        case
        for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for name in ALERTS:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it must not"


def test_every_recording_rule_is_unit_tested():
    """Each recorded series is evaluated in rules_test.yaml."""
    tested = {
        case["expr"]
        for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in group.get("promql_expr_test", [])
    }
    assert promql.recorded_names(promql.load_rules()) <= tested


def _base_names() -> set[str]:
    """Series names as recording rules name them: a counter without its _total."""
    return {s.name.removesuffix("_total") for s in SERIES}


@pytest.mark.parametrize(
    "rule",
    [r for r in promql.all_rules(promql.load_rules()) if "record" in r],
    ids=lambda r: r["record"],
)
def test_recording_rules_are_named_level_metric_operations(rule):
    """``level:metric:operations``: the level lists the labels kept, the metric is a series of
    the product, the operations say what was done (``sum``, ``max``, ``increase1d``)."""
    level, metric, operations = rule["record"].split(":")
    assert metric in _base_names(), metric
    assert metric in rule["expr"]
    outer = re.match(r"(\w+) by \(([^)]*)\)", rule["expr"])
    assert outer, rule["expr"]
    kept = [label.strip() for label in outer[2].split(",")]
    assert all(part in kept for part in level.split("_")), (level, kept)
    if operations.startswith("increase"):
        assert f"[{operations.removeprefix('increase')}]" in rule["expr"]
        assert outer[1] == "sum"
    else:
        assert operations == outer[1]


@pytest.mark.parametrize("name", ALERTS)
def test_every_alert_says_how_bad_and_what(name):
    """A severity label, a one-line summary and a description naming where."""
    rule = promql.alert(promql.load_rules(), name)
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"] and "\n" not in rule["annotations"]["summary"].strip()
    assert "{{ $labels." in rule["annotations"]["description"]
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]


@pytest.mark.parametrize("name", ALERTS)
def test_every_threshold_is_a_number_on_a_line_that_names_it(name):
    """Each comparison with a number, and each window, ends its line with a comment saying what it
    is; the admin changes the number there (or ``for:``)."""
    rule = promql.alert(promql.load_rules(), name)
    for line in rule["expr"].splitlines():
        if re.search(r"[<>]=?\s*[-\d.]|\[\d+[smhd]\]|offset \d", line):
            assert re.search(r"#\s*\S", line), f"{name}: a number without a comment: {line}"


def test_the_thresholds_change_by_changing_numbers_only(tmp_path):
    """The end-to-end test's numbers (promql.fast_rules) give rules promtool accepts, the same
    but for those numbers."""
    fast = promql.fast_rules()
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(fast, sort_keys=False))
    result = promql.promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout
    shipped = promql.load_rules()
    for before, after in zip(promql.all_rules(shipped), promql.all_rules(fast)):
        words = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*|[(){}\[\],=~!\"]")
        assert words.findall(before["expr"]) == words.findall(after["expr"]), before.get("alert")

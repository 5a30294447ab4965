"""The Prometheus examples of the docs are configs Prometheus accepts, and they agree.

``docs/examples/prometheus-*.yaml`` are complete ``prometheus.yml`` files, checked with
``promtool check config`` as written. Debian's Prometheus is built without Kubernetes service
discovery, so where promtool says it does not know ``kubernetes_sd_configs``, the scrape config is
checked again with a file discovery in its place, everything else as written. The PodMonitor
(a Prometheus Operator resource, which promtool does not read) must relabel as the scrape config
does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import yaml

from tests.monitoring import promql
from tests.monitoring.promql import EXAMPLES, ROOT

KUBERNETES_SD_MISSING = "field kubernetes_sd_configs not found"


def check_config(path: Path, folder: Path) -> str:
    """promtool's verdict on a prometheus.yml ("" when it passes)."""
    result = promql.promtool("check", "config", str(path), cwd=folder)
    return "" if result.returncode == 0 else result.stdout


def without_kubernetes_sd(config: dict) -> dict:
    """The config with each ``kubernetes_sd_configs`` replaced by a file discovery."""
    for scrape in config["scrape_configs"]:
        if scrape.pop("kubernetes_sd_configs", None) is not None:
            scrape["file_sd_configs"] = [{"files": ["targets.json"]}]
    return config


def test_the_kubernetes_scrape_config_passes_promtool(tmp_path):
    """prometheus-scrape.yaml is a valid prometheus.yml (discovery aside, on Debian's build)."""
    # Given the example as written
    example = EXAMPLES / "prometheus-scrape.yaml"
    # When promtool checks it
    said = check_config(example, tmp_path)
    # Then it passes, or only this build's missing Kubernetes discovery stops it
    if said:
        assert KUBERNETES_SD_MISSING in said, said
        assert len(re.findall(r"FAILED|line \d+:", said)) <= 2, said
        config = without_kubernetes_sd(yaml.safe_load(example.read_text()))
        (tmp_path / "targets.json").write_text("[]")
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        assert not check_config(copy, tmp_path)


def test_the_token_example_passes_promtool_with_the_shipped_rules(tmp_path):
    """prometheus-token.yaml, next to the shipped rules and a token file as it says, passes."""
    # Given the example, the rules copied from the package and a token file beside it
    shutil.copy(EXAMPLES / "prometheus-token.yaml", tmp_path / "prometheus.yml")
    shutil.copy(promql.RULES, tmp_path / "tfgpu-rules.yaml")
    (tmp_path / "jupyter-token").write_text("not-a-real-token\n")
    # Then promtool accepts it and the rules it loads
    said = check_config(tmp_path / "prometheus.yml", tmp_path)
    assert not said, said
    # And without the token file it would not: promtool checks what the example names
    (tmp_path / "jupyter-token").unlink()
    assert "jupyter-token" in check_config(tmp_path / "prometheus.yml", tmp_path)


def test_the_federation_example_passes_promtool_and_pulls_the_recorded_series(tmp_path):
    """prometheus-federate.yaml is valid, and its match[] takes every recorded series."""
    example = EXAMPLES / "prometheus-federate.yaml"
    assert not check_config(example, tmp_path)
    (scrape,) = yaml.safe_load(example.read_text())["scrape_configs"]
    (recorded, alerts) = scrape["params"]["match[]"]
    pattern = re.fullmatch(r'\{__name__=~"(.+)"\}', recorded)[1]
    for name in promql.recorded_names(promql.load_rules()):
        assert re.fullmatch(pattern, name), name
    assert not re.fullmatch(pattern, "tfgpu_kernel_gpu_memory_bytes")  # not the raw series
    assert 'alertname=~"TFGPU.+"' in alerts


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _as_relabel_config(rule: dict) -> dict:
    """A PodMonitor relabeling in prometheus.yml's spelling."""
    return {_snake(key): value for key, value in rule.items()}


def keep(label: str, regex: str) -> dict:
    """A relabel rule that keeps the targets whose ``label`` matches."""
    return {"source_labels": [label], "regex": regex, "action": "keep"}


def test_the_podmonitor_relabels_as_the_scrape_config_does():
    """Same namespace, pods, port, metrics paths and node label as prometheus-scrape.yaml."""
    # Given both examples
    monitor = yaml.safe_load((EXAMPLES / "prometheus-podmonitor.yaml").read_text())
    (scrape,) = yaml.safe_load((EXAMPLES / "prometheus-scrape.yaml").read_text())["scrape_configs"]
    relabel = scrape["relabel_configs"]
    # Then the PodMonitor selects the same pods on the same port
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    spec = monitor["spec"]
    assert (
        spec["namespaceSelector"]["matchNames"]
        == scrape["kubernetes_sd_configs"][0]["namespaces"]["names"]
    )
    assert spec["selector"]["matchLabels"] == {"component": "singleuser-server"}
    assert keep("__meta_kubernetes_pod_label_component", "singleuser-server") in relabel
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "notebook-port"
    assert keep("__meta_kubernetes_pod_container_port_name", "notebook-port") in relabel
    # And it rewrites the metrics path and adds the node exactly as the scrape config does
    wanted = [r for r in relabel if r.get("target_label") in ("__metrics_path__", "node")]
    assert [_as_relabel_config(r) for r in endpoint["relabelings"]] == wanted
    # And it names the node as the metrics' host exactly as the scrape config does
    metric_relabel = [_as_relabel_config(r) for r in endpoint["metricRelabelings"]]
    assert metric_relabel == scrape["metric_relabel_configs"]


def relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str]:
    """Prometheus's ``replace`` and ``keep`` relabeling, enough for these examples."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(n, "") for n in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if not match:
                return {}
        elif match:
            labels[rule["target_label"]] = re.sub(
                r"\$(\d+)", lambda m: match[int(m[1])], rule.get("replacement", "$1")
            )
    return labels


def test_the_scrape_config_finds_each_servers_metrics_path():
    """KubeSpawner's pods (a default server and a named one) get their own /metrics."""
    (scrape,) = yaml.safe_load((EXAMPLES / "prometheus-scrape.yaml").read_text())["scrape_configs"]
    pod = {
        "__meta_kubernetes_pod_label_component": "singleuser-server",
        "__meta_kubernetes_pod_container_port_name": "notebook-port",
        "__meta_kubernetes_pod_annotation_hub_jupyter_org_username": "alice",
        "__meta_kubernetes_pod_ip": "10.1.2.3",
        "__meta_kubernetes_pod_node_name": "gpu-node-7",
        "__address__": "10.1.2.3:8888",
        "__metrics_path__": "/metrics",
    }
    default = relabel(scrape["relabel_configs"], pod)
    assert default["__metrics_path__"] == "/user/alice/metrics"
    assert default["__address__"] == "10.1.2.3:8888" and default["node"] == "gpu-node-7"
    named = relabel(
        scrape["relabel_configs"],
        {**pod, "__meta_kubernetes_pod_annotation_hub_jupyter_org_servername": "big-gpu"},
    )
    assert named["__metrics_path__"] == "/user/alice/big-gpu/metrics"
    hub = relabel(
        scrape["relabel_configs"], {**pod, "__meta_kubernetes_pod_label_component": "hub"}
    )
    assert hub == {}
    # The metrics name the user themselves; a target label "user" would rename theirs.
    assert "user" not in default


def test_the_scrape_config_makes_the_node_the_metrics_host():
    """A kernel's and a GPU's series say the node, not the pod; other series are left alone."""
    (scrape,) = yaml.safe_load((EXAMPLES / "prometheus-scrape.yaml").read_text())["scrape_configs"]
    rules = scrape["metric_relabel_configs"]
    target = {"node": "gpu-node-7", "pod": "jupyter-alice"}
    kernel = {"__name__": "tfgpu_kernel_gpu_memory_bytes", "hostname": "jupyter-alice", **target}
    gpu = {"__name__": "tfgpu_gpu_memory_used_bytes", "Hostname": "jupyter-alice", **target}
    other = {"__name__": "http_request_duration_seconds_count", **target}
    assert relabel(rules, kernel)["hostname"] == "gpu-node-7"
    assert relabel(rules, gpu)["Hostname"] == "gpu-node-7"
    assert relabel(rules, other) == other


def test_the_docs_show_the_examples_they_describe():
    """The pages show the examples, and say where the shipped rules and dashboard are."""
    kubernetes = (ROOT / "docs" / "admin" / "kubernetes.md").read_text()
    cluster = (ROOT / "docs" / "admin" / "cluster.md").read_text()
    for example in ("prometheus-scrape.yaml", "prometheus-podmonitor.yaml"):
        assert f"<!-- generated:example {example}:begin -->" in kubernetes
    for example in ("prometheus-token.yaml", "prometheus-federate.yaml"):
        assert f"<!-- generated:example {example}:begin -->" in cluster
    for shipped in ("tfgpu-rules.yaml", "tfgpu-dashboard.json"):
        assert shipped in cluster


def test_the_rules_and_dashboard_are_package_data():
    """Installed with the package, where the docs say: jupyter_tfgpu/prometheus/. The wheel
    takes every file of the package folder that git does not ignore."""
    shipped = files("jupyter_tfgpu") / "prometheus"
    for name in ("tfgpu-rules.yaml", "tfgpu-dashboard.json"):
        assert (shipped / name).read_bytes() == (promql.SHIPPED / name).read_bytes()
        if shutil.which("git") and (ROOT / ".git").exists():
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", f"jupyter_tfgpu/prometheus/{name}"], cwd=ROOT
            )
            assert ignored.returncode == 1, f"{name} is git-ignored: the wheel would leave it out"
    pyproject = (ROOT / "pyproject.toml").read_text()
    wheel = pyproject.split("[tool.hatch.build.targets.wheel]", 1)[1].split("\n[", 1)[0]
    assert 'packages = ["jupyter_tfgpu"]' in wheel and "exclude" not in wheel

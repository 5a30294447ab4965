"""End to end on a real Prometheus: two users' Jupyter servers, scraped with their tokens.

alice and bob each run a jupyter_server (``JUPYTERHUB_USER`` set, ``base_url`` /user/<name>/,
the simulated backend, whose per-kernel GPU memory is the kernel's real resident memory) with a
real kernel holding a numpy block, idle after that. Prometheus scrapes both every second with
each server's token and runs the shipped rules with the numbers of ``promql.fast_rules()``
(seconds instead of hours, a lower idle threshold): only numbers differ from the shipped file.

Then, over Prometheus's HTTP API: GPU memory by user, the idle-holder alert pending then firing,
every expression of the rules, the dashboard and the docs evaluated, and one server stopped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_tfgpu.gpu.simulated import expand_gpu_list
from jupyter_tfgpu.server.config import DEFAULT_SIMULATED_GPUS
from tests.monitoring import promql
from tests.monitoring.stack import DcgmStandIn, JupyterServer, Prometheus, wait_until

pytestmark = pytest.mark.timeout(300)

MIB = 2**20
# What each user's kernel allocates; the kernel's own resident memory comes on top.
BLOCKS = {"alice": 300 * MIB, "bob": 50 * MIB}
# A kernel's resident memory besides its block: the interpreter, ipykernel, numpy.
KERNEL_BASELINE_AT_MOST = 200 * MIB
ALICE_CAP_MB = 256  # under what her kernel holds: her kernel is over its cap
# A server Prometheus scrapes that runs without the extension (switched off on its command line).
BARE_USER = "carol"
BARE_ARGS = ("--ServerApp.jpserver_extensions=jupyter_tfgpu=False",)
SERVER_ARGS = (
    "--TFGPU.backend=simulated",
    "--TFGPU.sample_interval=0.5",
    "--TFGPU.process_interval=0.5",
)
START_TIMEOUT = 120
DATA_TIMEOUT = 60


@dataclass
class Stack:
    """What the tests talk to."""

    servers: dict[str, JupyterServer]
    prometheus: Prometheus
    kernels: dict[str, str]  # user -> the kernel holding their block
    bare: JupyterServer  # a Jupyter server without jupyter-tfgpu

    def logs(self) -> str:
        """The logs, for a failure message."""
        servers = [*self.servers.values(), self.bare]
        return "\n".join([self.prometheus.log_tail(), *(s.log_tail() for s in servers)])


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Both servers with their kernels holding memory, idle; Prometheus scraping them."""
    binary = promql.require(promql.PROMETHEUS)
    root = tmp_path_factory.mktemp("monitoring")
    servers = {user: JupyterServer(user, root / user) for user in BLOCKS}
    hostname = socket.gethostname()
    dcgm = DcgmStandIn(
        [
            {"gpu": str(d.index), "UUID": d.uuid, "modelName": d.name, "Hostname": hostname}
            for d in expand_gpu_list(DEFAULT_SIMULATED_GPUS)
        ]
    )
    prometheus = Prometheus(binary, root / "prometheus")
    bare = JupyterServer(BARE_USER, root / BARE_USER)
    stack = Stack(servers, prometheus, {}, bare)
    try:
        for server in servers.values():
            server.start(*SERVER_ARGS)
        bare.start(*SERVER_ARGS, *BARE_ARGS)
        prometheus.write_config(
            promql.fast_rules(), [*servers.values(), bare], {"dcgm": dcgm.address}
        )
        prometheus.start()
        for server in servers.values():
            wait_until(server.ready, START_TIMEOUT, f"{server.user}'s server", stack.logs)
        wait_until(bare.serving, START_TIMEOUT, f"{BARE_USER}'s server", stack.logs)
        wait_until(prometheus.ready, START_TIMEOUT, "Prometheus", stack.logs)

        # alice's notebook has a cap under what her kernel will hold.
        alice, bob = servers["alice"], servers["bob"]
        alice.request("PUT", "tfgpu/api/policies/train.ipynb", {"memory_limit_mb": ALICE_CAP_MB})
        # bob opens a notebook that asks for 3 GPUs of the 2 there are: a notebook waiting
        # (placement "partial"); he closes it again, its placement stays counted.
        bob.request("PUT", "tfgpu/api/policies/queue.ipynb", {"devices": "auto", "gpu_count": 3})
        queued = bob.open_notebook("queue.ipynb")
        bob.request("DELETE", f"api/sessions/{queued['id']}")
        stack.kernels["alice"] = alice.open_notebook("train.ipynb")["kernel"]["id"]
        stack.kernels["bob"] = bob.open_notebook("explore.ipynb")["kernel"]["id"]

        # Each kernel allocates its block, then stays idle.
        def hold(user: str) -> None:
            code = f"import numpy\nblock = numpy.ones({BLOCKS[user]}, dtype=numpy.uint8)"
            servers[user].run(stack.kernels[user], code)

        with ThreadPoolExecutor(len(BLOCKS)) as pool:
            for done in [pool.submit(hold, user) for user in BLOCKS]:
                done.result(timeout=START_TIMEOUT)
        yield stack
    finally:
        for server in [*servers.values(), bare]:
            server.stop()
        prometheus.stop()
        dcgm.stop()


def by_user(prometheus: Prometheus, expr: str) -> dict[str, float]:
    """``user`` -> value of an instant query."""
    return {dict(labels)["user"]: value for labels, value in prometheus.values(expr).items()}


def kernel_memory_on_server(server: JupyterServer) -> float:
    """The GPU memory the server itself exports for its kernels, from a scrape of its own."""
    total = 0.0
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            if sample.name == "tfgpu_kernel_gpu_memory_bytes":
                total += sample.value
    return total


def test_gpu_memory_by_user_has_both_users_with_their_figures(stack):
    """``user:tfgpu_kernel_gpu_memory_bytes:sum`` has alice and bob, each with what their
    kernel holds, as their own servers export it."""
    prometheus = stack.prometheus

    # When Prometheus has scraped both servers since the blocks were allocated
    def both_holding():
        found = by_user(prometheus, "user:tfgpu_kernel_gpu_memory_bytes:sum")
        return found if all(found.get(u, 0) >= BLOCKS[u] for u in BLOCKS) else None

    recorded = wait_until(
        both_holding, DATA_TIMEOUT, "both users' memory in Prometheus", stack.logs
    )

    # Then each user's figure is their block and a kernel's own memory
    assert set(recorded) == {"alice", "bob"}
    for user, block in BLOCKS.items():
        assert block <= recorded[user] <= block + KERNEL_BASELINE_AT_MOST, (user, recorded)

        # And it is what the user's server exports: a kernel's resident memory moves, so the
        # two are compared at one moment, the server's figure against Prometheus's latest
        def as_exported(user: str = user) -> tuple[float, float] | None:
            exported = kernel_memory_on_server(stack.servers[user])
            latest = by_user(prometheus, "user:tfgpu_kernel_gpu_memory_bytes:sum").get(user)
            close = latest is not None and latest == pytest.approx(exported, rel=0.05)
            return (latest, exported) if close else None

        wait_until(as_exported, DATA_TIMEOUT, f"{user}'s figure as the server exports it", stack.logs)
    # And the notebook-level series name who, where and which notebook
    notebooks = {
        (labels["user"], labels["notebook"])
        for labels in map(dict, prometheus.values("notebook:tfgpu_kernel_gpu_memory_bytes:sum"))
    }
    assert notebooks == {("alice", "train.ipynb"), ("bob", "explore.ipynb")}
    hostnames = by_user(prometheus, "group by (user, hostname) (tfgpu_server_info)")
    assert set(hostnames) == {"alice", "bob"}


def alert_states(prometheus: Prometheus, alertname: str, seconds: int = 300) -> list[dict]:
    """Every ALERTS series of ``alertname`` over the last ``seconds``: labels and first time."""
    now = time.time()
    answer = prometheus.get(
        "api/v1/query_range",
        query=f'ALERTS{{alertname="{alertname}"}}',
        start=str(now - seconds),
        end=str(now),
        step="1",
    )
    assert answer["status"] == "success", answer
    return [
        {**item["metric"], "since": float(item["values"][0][0])}
        for item in answer["data"]["result"]
    ]


def test_the_idle_holder_alert_goes_pending_then_firing(stack):
    """alice's idle kernel, over the (lowered) threshold, is pending, then firing; bob's kernel,
    under it, never is."""
    prometheus = stack.prometheus
    alice_kernel = stack.kernels["alice"]

    # When alice's kernel has stayed idle past the threshold for the rule's `for`
    def firing():
        answer = prometheus.get("api/v1/alerts")
        return [
            a
            for a in answer["data"]["alerts"]
            if a["labels"]["alertname"] == "TFGPUKernelIdleHoldingMemory" and a["state"] == "firing"
        ]

    (alert,) = wait_until(firing, DATA_TIMEOUT, "the idle-holder alert to fire", stack.logs)

    # Then it is alice's kernel, and the alert was pending before it fired
    assert alert["labels"]["user"] == "alice" and alert["labels"]["kernel_id"] == alice_kernel
    assert alert["labels"]["notebook"] == "train.ipynb" and alert["labels"]["severity"] == "warning"
    states = alert_states(prometheus, "TFGPUKernelIdleHoldingMemory")
    since = {s["alertstate"]: s["since"] for s in states if s["kernel_id"] == alice_kernel}
    assert set(since) == {"pending", "firing"} and since["pending"] < since["firing"], states
    # And bob's kernel, holding less than the threshold, never was
    assert not [s for s in states if s["user"] == "bob"], states
    assert "Restarting its kernel frees it." in alert["annotations"]["description"]


def test_the_over_cap_alert_fires_for_the_kernel_over_its_cap(stack):
    """alice's kernel holds more than her notebook's cap: its alert fires, with the cap."""

    def firing():
        answer = stack.prometheus.get("api/v1/alerts")
        return [
            a
            for a in answer["data"]["alerts"]
            if a["labels"]["alertname"] == "TFGPUKernelOverMemoryCap" and a["state"] == "firing"
        ]

    (alert,) = wait_until(firing, DATA_TIMEOUT, "the over-cap alert to fire", stack.logs)
    assert alert["labels"]["kernel_id"] == stack.kernels["alice"]
    assert "over its cap of 256MiB" in alert["annotations"]["description"]


def expressions() -> list[promql.Expression]:
    """Every expression checked end to end: the rules as loaded, the dashboard, the docs."""
    return [
        *promql.rule_expressions(promql.fast_rules()),
        *promql.dashboard_expressions(),
        *promql.docs_expressions(),
    ]


def evaluate(prometheus: Prometheus, found: list[promql.Expression]) -> tuple[list, list]:
    """(errors, empty): the expressions Prometheus refused, and those that returned nothing."""
    errors, empty = [], []
    for expression in found:
        answer = prometheus.query(expression.expr)
        if answer["status"] != "success":
            errors.append((expression.where, expression.expr, answer.get("error")))
        elif not answer["data"]["result"]:
            empty.append((expression.where, expression.expr))
    return errors, empty


def test_every_expression_of_the_rules_dashboard_and_docs_evaluates_and_returns_data(stack):
    """No expression is an error, and each has data once both servers have been scraped."""
    prometheus = stack.prometheus
    found = expressions()
    # The shipped rules too, with their real numbers: they must evaluate (no data expected).
    shipped = promql.rule_expressions(promql.load_rules())
    assert len(found) > 40

    errors, _ = evaluate(prometheus, shipped)
    assert not errors, errors
    # Usage and alerts need a few evaluations: wait for data, then report what has none.
    last: list = []

    def all_have_data():
        nonlocal last
        errors, last = evaluate(prometheus, found)
        assert not errors, errors
        return not last

    if not _eventually(all_have_data, DATA_TIMEOUT):
        pytest.fail(f"expressions with no data: {last}")


def _eventually(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_a_server_without_the_extension_is_alerted_on(stack):
    """carol's server serves with jupyter-tfgpu switched off: Prometheus scrapes it, and the
    alert names that server alone, with its jupyter_server version."""
    prometheus = stack.prometheus
    firing = wait_until(
        lambda: prometheus.values('ALERTS{alertname="TFGPUExtensionNotLoaded",alertstate="firing"}'),
        DATA_TIMEOUT,
        "the alert on carol's server",
        stack.logs,
    )
    assert {dict(labels)["job"] for labels in firing} == {f"jupyter-{BARE_USER}"}
    assert all(dict(labels)["version"] for labels in firing)
    assert set(by_user(prometheus, "tfgpu_server_info")) >= {"alice"}
    assert BARE_USER not in by_user(prometheus, "tfgpu_server_info")


def test_a_stopped_server_goes_stale_and_nothing_errors(stack):
    """bob's server stops: his series are gone from the next scrape on, alice's stay, every
    expression still evaluates, and no rule fails."""
    prometheus = stack.prometheus
    # Given both users in Prometheus
    wait_until(
        lambda: set(by_user(prometheus, "tfgpu_server_info")) == {"alice", "bob"},
        DATA_TIMEOUT,
        "both servers scraped",
        stack.logs,
    )

    # When bob's server stops
    stack.servers["bob"].stop()

    # Then its target is down and its series are stale at once (not after 5 minutes)
    wait_until(
        lambda: prometheus.values('up{job="jupyter-bob"} == 0'), DATA_TIMEOUT, "bob's target down"
    )
    assert set(by_user(prometheus, "tfgpu_server_info")) == {"alice"}
    assert not prometheus.values('tfgpu_kernel_gpu_memory_bytes{user="bob"}')
    wait_until(
        lambda: set(by_user(prometheus, "user:tfgpu_kernel_gpu_memory_bytes:sum")) == {"alice"},
        DATA_TIMEOUT,
        "bob gone from the recorded memory by user",
        stack.logs,
    )
    # And every expression still evaluates without an error
    errors, _ = evaluate(prometheus, expressions())
    assert not errors, errors
    # And every rule's last evaluation went well, and only bob's target is down
    groups = prometheus.get("api/v1/rules")["data"]["groups"]
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not unhealthy, unhealthy
    targets = prometheus.get("api/v1/targets")["data"]["activeTargets"]
    down = {t["labels"]["job"] for t in targets if t["health"] != "up"}
    assert down == {"jupyter-bob"}, targets

"""A real JupyterHub on 127.0.0.1: the admin's caps reach every user's server, and users are kept apart.

The hub (PyPI ``jupyterhub``) runs with its real proxy (npm ``configurable-http-proxy``, put in
``build/hub/`` by ``scripts/install-hub.sh``), the dummy authenticator and a local spawner that
starts each user's ``jupyterhub-singleuser`` as this OS user with a home folder of its own. The
admin sets the caps once, on the single-user servers' command line (``c.Spawner.args``), as the
admin guide says to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from traitlets.config import Config

from jupyter_tfgpu.server.config import TFGPU

requests = pytest.importorskip("requests")

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CHP = ROOT / "build" / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
USERS = ("alice", "bob")
PASSWORD = "not-a-real-secret"
ADMIN_TOKEN = "tfgpu-hub-test-admin-token-0123456789"
# The admin guide's example: the hub config whose Spawner.args set everyone's caps.
EXAMPLE = ROOT / "docs" / "examples" / "jupyterhub_config.py"
# This machine has no GPU: the simulated backend instead of the example's (a setting may be
# given only once on the command line).
TEST_ARGS = ["--TFGPU.backend=simulated"]
# What alice writes in her own ~/.jupyter to get around the caps.
ALICE_CONFIG = """\
c.ServerApp.jpserver_extensions = {"jupyter_tfgpu": False}
c.TFGPU.max_memory_mb = 999999
c.TFGPU.force_memory_growth = False
c.TFGPU.enforcement = "off"
c.TFGPU.backend = "none"
c.TFGPU.sample_interval = 2.5  # not on the hub's command line: this one is hers to set
"""
START_TIMEOUT = 90
# Where GET config shows the enforcement settings.
ENFORCEMENT_FIELDS = {
    "enforcement": "action",
    "enforcement_grace": "grace",
    "idle_timeout": "idle_timeout",
    "idle_min_memory_mb": "idle_min_memory_mb",
    "idle_action": "idle_action",
    "max_actions_per_hour": "max_actions_per_hour",
}

pytestmark = pytest.mark.timeout(300)


def _missing(what: str) -> None:
    """Skip on a developer's machine; fail in CI, where scripts/install-hub.sh must have run."""
    message = f"{what} is not installed: run `bash scripts/install-hub.sh`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def proxy_command() -> str:
    """configurable-http-proxy from build/hub (scripts/install-hub.sh), else from PATH."""
    if LOCAL_CHP.exists():
        return str(LOCAL_CHP)
    found = shutil.which("configurable-http-proxy")
    if found is None:
        _missing("configurable-http-proxy (npm)")
    return found


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def example_args() -> list[str]:
    """The Spawner.args of the admin guide's JupyterHub example, as JupyterHub would load them."""
    config = Config()
    code = compile(EXAMPLE.read_text(), str(EXAMPLE), "exec")
    exec(code, {"get_config": lambda: config, "c": config})  # noqa: S102 - our own docs example
    return list(config.Spawner.args)


def expected_settings(args: list[str]) -> dict[str, Any]:
    """The TFGPU value each ``--TFGPU.name=value`` sets, typed by its trait."""
    traits = TFGPU.class_traits(config=True)
    expected: dict[str, Any] = {}
    for arg in args:
        match = re.fullmatch(r"--TFGPU\.(\w+)=(.*)", arg)
        if match:
            expected[match[1]] = traits[match[1]].from_string(match[2])
    return expected


def shown(config: dict[str, Any], name: str) -> Any:
    """Where GET config shows the setting ``name``; KeyError when it does not."""
    if name in ENFORCEMENT_FIELDS:
        return config["enforcement"][ENFORCEMENT_FIELDS[name]]
    return config[name]


SPAWNER_ARGS = [a for a in example_args() if not a.startswith("--TFGPU.backend=")] + TEST_ARGS
EXPECTED = expected_settings(SPAWNER_ARGS)
CAP_MB = EXPECTED["max_memory_mb"]


HUB_CONFIG = """\
# Written by tests/server/test_jupyterhub.py; the admin guide explains each line.
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = {pid_file!r}
c.JupyterHub.db_url = "sqlite:///{db}"
c.JupyterHub.cookie_secret_file = {cookie_secret!r}
c.JupyterHub.cleanup_servers = True

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {users!r}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {homes!r} + "/{{username}}"
c.Spawner.ip = "127.0.0.1"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = {start_timeout}
c.Spawner.http_timeout = {start_timeout}
# The caps for everyone's server, on the command line: it wins over the users' config files.
c.Spawner.args = {args!r}
if {root!r}:  # CI runs as root; a single-user server refuses to without this
    c.Spawner.args.append("--allow-root")
c.Spawner.environment = {{"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}}

# A service token for the test, standing in for the admin.
c.JupyterHub.services = [{{"name": "tester", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens"], "services": ["tester"]}}
]
"""


@dataclass
class Hub:
    """A running hub and what the test needs to talk to it."""

    url: str
    process: subprocess.Popen
    log: Path
    homes: Path
    tokens: dict[str, str] = field(default_factory=dict)
    servers: list[psutil.Process] = field(default_factory=list)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the hub REST API as the admin service."""
        headers = {"Authorization": f"token {ADMIN_TOKEN}"}
        return requests.request(
            method, f"{self.url}hub/api/{path}", headers=headers, timeout=30, **kwargs
        )

    def tfgpu(
        self, owner: str, route: str, token: str, method: str = "GET", **kwargs: Any
    ) -> requests.Response:
        """Call ``owner``'s tfgpu API through the proxy with ``token``, following no redirect."""
        return requests.request(
            method,
            f"{self.url}user/{owner}/tfgpu/api/{route}",
            headers={"Authorization": f"token {token}"},
            allow_redirects=False,
            timeout=30,
            **kwargs,
        )

    def log_tail(self) -> str:
        """The end of the hub's log (the single-user servers log there too)."""
        return self.log.read_text(errors="replace")[-6000:]


def wait_until(check, timeout: float, what: str, hub: Hub | None = None) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except requests.ConnectionError:
            found = None
        if found:
            return found
        if hub is not None and hub.process.poll() is not None:
            pytest.fail(f"the hub exited while waiting for {what}:\n{hub.log_tail()}")
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}" + (f":\n{hub.log_tail()}" if hub else ""))


def start_server(hub: Hub, user: str) -> None:
    """Create the user (allowed_users may have already) and start their server, through the hub API."""
    created = hub.api("POST", f"users/{user}")
    assert created.status_code in (201, 409), created.text
    answer = hub.api("POST", f"users/{user}/server")
    assert answer.status_code in (201, 202), answer.text


def server_ready(hub: Hub, user: str) -> dict[str, Any] | None:
    """The user's default server model once it is ready."""
    model = hub.api("GET", f"users/{user}").json()
    server = model.get("servers", {}).get("")
    return server if server and server.get("ready") else None


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[Hub]:
    """A hub on 127.0.0.1 with alice's and bob's servers running."""
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        _missing("jupyterhub (PyPI)")
    chp = proxy_command()
    singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")
    assert singleuser.exists(), singleuser
    tmp = tmp_path_factory.mktemp("hub")
    homes = tmp / "home"
    for user in USERS:
        (homes / user).mkdir(parents=True)
    # alice tries to get around the caps in her own config file; the command line must win.
    (homes / "alice" / ".jupyter").mkdir()
    (homes / "alice" / ".jupyter" / "jupyter_server_config.py").write_text(ALICE_CONFIG)
    port = free_port()
    config = tmp / "jupyterhub_config.py"
    config.write_text(
        HUB_CONFIG.format(
            port=port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            chp=chp,
            pid_file=str(tmp / "proxy.pid"),
            db=tmp / "hub.sqlite",
            cookie_secret=str(tmp / "cookie_secret"),
            password=PASSWORD,
            users=set(USERS),
            homes=str(homes),
            singleuser=str(singleuser),
            start_timeout=START_TIMEOUT,
            args=SPAWNER_ARGS,
            root=os.geteuid() == 0,
            token=ADMIN_TOKEN,
        )
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUPYTER", "JPY_", "TFGPU_"))
    }
    env.update(
        HOME=str(tmp),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        PATH=f"{singleuser.parent}:{env['PATH']}",
    )
    log = tmp / "hub.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    hub = Hub(url=f"http://127.0.0.1:{port}/", process=process, log=log, homes=homes)
    try:
        wait_until(lambda: hub.api("GET", "").status_code == 200, 60, "the hub API", hub)
        for user in USERS:
            start_server(hub, user)
        for user in USERS:
            server = wait_until(
                lambda u=user: server_ready(hub, u), START_TIMEOUT, f"{user}'s server", hub
            )
            pid = (server.get("state") or {}).get("pid")
            assert pid, server  # to clean up after the hub, whatever happens to it
            hub.servers.append(psutil.Process(int(pid)))
            answer = hub.api("POST", f"users/{user}/tokens", json={"note": "tfgpu test"})
            answer.raise_for_status()
            hub.tokens[user] = answer.json()["token"]
        yield hub
    finally:
        _stop(hub)


def _stop(hub: Hub) -> None:
    """Stop the servers through the hub, then the hub; then anything of ours left behind."""
    if hub.process.poll() is None:
        for user in USERS:
            try:
                hub.api("DELETE", f"users/{user}/server")
            except requests.RequestException:
                pass
        hub.process.send_signal(signal.SIGTERM)
        try:
            hub.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(hub.process.pid, signal.SIGKILL)
            hub.process.wait(timeout=10)
    for server in hub.servers:  # single-user servers run in sessions of their own
        try:
            if server.is_running():  # the same process: psutil compares its start time too
                server.kill()
        except psutil.NoSuchProcess:
            pass


def assert_hub_settings(config: dict[str, Any]) -> None:
    """Every TFGPU setting of the hub's Spawner.args is the one in force."""
    checked = []
    for name, value in EXPECTED.items():
        try:
            in_force = shown(config, name)
        except KeyError:
            continue  # not shown by GET config (e.g. use_provisioner)
        assert in_force == value, (name, in_force, value)
        checked.append(name)
    assert {"max_memory_mb", "force_memory_growth", "enforcement", "backend"} <= set(checked)


def test_each_users_server_loads_the_extension_with_the_hub_caps(hub):
    """Both servers the hub spawned answer GET config with the settings the hub admin set."""
    assert CAP_MB and EXPECTED["backend"] == "simulated"
    for user in USERS:
        # When the user asks their own server for the settings in force
        answer = hub.tfgpu(user, "config", hub.tokens[user])
        # Then the extension answers, under the user's prefix, with the hub's settings
        assert answer.status_code == 200, (answer.status_code, answer.text, hub.log_tail())
        assert_hub_settings(answer.json())
        # And the simulated GPUs are served
        status = hub.tfgpu(user, "status", hub.tokens[user]).json()
        assert status["backend"] == "simulated" and status["available"] is True


def test_a_users_own_config_file_does_not_undo_the_hub_settings(hub):
    """alice's ~/.jupyter config turns the extension off and raises the cap; the command line wins."""
    # Given alice's config file (written before her server started)
    assert "999999" in (hub.homes / "alice" / ".jupyter" / "jupyter_server_config.py").read_text()
    # Then her server still loads the extension, with every one of the hub's settings
    answer = hub.tfgpu("alice", "config", hub.tokens["alice"])
    assert answer.status_code == 200, answer.text
    assert_hub_settings(answer.json())
    # And her file was read: what the hub left open is hers (bob's is the default)
    assert answer.json()["sample_interval"] == 2.5
    assert hub.tfgpu("bob", "config", hub.tokens["bob"]).json()["sample_interval"] == 1.0


def test_a_notebook_policy_over_the_cap_is_refused(hub):
    """A user cannot raise the cap with a per-notebook policy: 403 names the cap."""
    # When bob asks for more than the hub's cap for one of his notebooks
    answer = hub.tfgpu(
        "bob",
        "policies/train.ipynb",
        hub.tokens["bob"],
        method="PUT",
        json={"memory_limit_mb": CAP_MB * 4},
    )
    # Then his own server refuses it and says which cap
    assert answer.status_code == 403, answer.text
    assert "max_memory_mb" in answer.text
    # And within the cap it is stored
    within = hub.tfgpu(
        "bob",
        "policies/train.ipynb",
        hub.tokens["bob"],
        method="PUT",
        json={"memory_limit_mb": CAP_MB // 2},
    )
    assert within.status_code == 200, within.text


@pytest.mark.parametrize("route", ["config", "gpus", "policies", "kernels"])
def test_a_users_token_does_not_open_another_users_tfgpu_api(hub, route):
    """alice's token is refused by bob's server, and the other way round."""
    for user, other in (("alice", "bob"), ("bob", "alice")):
        # When one user's token is sent to the other's server
        answer = hub.tfgpu(other, route, hub.tokens[user])
        # Then it is refused, with no data
        assert answer.status_code == 403, (answer.status_code, answer.text)
        assert "max_memory_mb" not in answer.text and '"gpus"' not in answer.text
    # And the same token opens its owner's server
    assert hub.tfgpu("alice", route, hub.tokens["alice"]).status_code == 200


def test_each_server_serves_its_gpu_metrics_to_its_user_only(hub):
    """jupyter_server's /metrics carries the tfgpu_ gauges, behind the same credentials."""
    # When alice reads her server's metrics, and bob's
    own = requests.get(
        f"{hub.url}user/alice/metrics",
        headers={"Authorization": f"token {hub.tokens['alice']}"},
        timeout=30,
    )
    others = requests.get(
        f"{hub.url}user/bob/metrics",
        headers={"Authorization": f"token {hub.tokens['alice']}"},
        allow_redirects=False,
        timeout=30,
    )
    # Then hers has the GPU gauges, and bob's refuses her
    assert own.status_code == 200, own.text
    assert "tfgpu_gpu_memory_total_bytes" in own.text
    assert others.status_code == 403 and "tfgpu_" not in others.text


def test_a_users_login_cookie_does_not_open_another_users_tfgpu_api(hub):
    """Logged in at the hub as alice, the browser reaches alice's tfgpu API and not bob's."""
    browser = requests.Session()
    # Given alice logged in through the hub's login form
    form = browser.get(f"{hub.url}hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    data = {"username": "alice", "password": PASSWORD}
    if xsrf:
        data["_xsrf"] = xsrf.group(1)
    login = browser.post(f"{hub.url}hub/login", data=data, timeout=30, allow_redirects=False)
    assert login.status_code == 302, login.text
    # And alice opened her server in the browser (the OAuth hand-off gives her its cookie)
    page = browser.get(f"{hub.url}user/alice/lab", timeout=60)
    assert page.status_code == 200, page.url
    xsrf_cookie = browser.cookies.get("_xsrf", path="/user/alice/") or ""
    # When the browser calls alice's and bob's tfgpu API
    own = browser.get(
        f"{hub.url}user/alice/tfgpu/api/config", headers={"X-XSRFToken": xsrf_cookie}, timeout=30
    )
    others = browser.get(f"{hub.url}user/bob/tfgpu/api/config", timeout=30, allow_redirects=False)
    # Then alice's answers, and bob's refuses her
    assert own.status_code == 200, (own.status_code, own.text)
    assert json.loads(own.text)["max_memory_mb"] == CAP_MB
    assert others.status_code == 403, others.status_code
    assert "max_memory_mb" not in others.text
    # And opening bob's server as a page ends in the hub's refusal, never bob's server
    page = browser.get(f"{hub.url}user/bob/lab", timeout=60)
    assert page.status_code == 403, (page.status_code, page.url)
    assert page.url.startswith(f"{hub.url}hub/"), page.url

"""The server's own credentials stay out of kernels: real server, real kernels.

A server started with ``JUPYTER_TOKEN=... jupyter server`` (or by JupyterHub, which sets
``JUPYTERHUB_API_TOKEN`` and ``JPY_API_TOKEN``) keeps those variables in its environment, and
a kernel's environment is a copy of it. The provisioner takes them out.
"""

from __future__ import annotations

import pytest

from jupyter_tfgpu.protocol import KERNEL_ID_ENV
from jupyter_tfgpu.server.kernels.provisioner import HUB_TOKEN_ENV, SERVER_TOKEN_ENV
from tests.kernel_helpers import run_json, start_session

HUB_TOKEN = "hub-token-for-this-single-user-server"
# What the kernel and a process it starts see of the credentials.
READ_ENV = """
import json, os, subprocess, sys
child = subprocess.run(
    [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
    capture_output=True, text=True, check=True,
)
print(json.dumps({"kernel": dict(os.environ), "child": json.loads(child.stdout)}))
"""


@pytest.fixture
def server_env(monkeypatch, jp_serverapp, tmp_path):
    """The server's token and the hub's, in the server's environment as a launcher leaves them."""
    token = jp_serverapp.identity_provider.token
    token_file = tmp_path / "token"
    token_file.write_text(token)
    monkeypatch.setenv("JUPYTER_TOKEN", token)
    monkeypatch.setenv("JUPYTER_TOKEN_FILE", str(token_file))
    for name in HUB_TOKEN_ENV:
        monkeypatch.setenv(name, HUB_TOKEN)
    return token


async def test_a_kernel_never_sees_the_servers_token(jp_fetch, jp_serverapp, server_env):
    """Neither the kernel nor a process it starts has the server's or the hub's token."""
    # Given a server whose environment holds its own token and the hub's
    token = server_env
    # When a notebook's kernel starts and reads its environment and a child's
    session = await start_session(jp_fetch, "creds.ipynb")
    kernel_id = session["kernel"]["id"]
    seen = await run_json(jp_serverapp, kernel_id, READ_ENV)
    # Then no variable of either holds a server credential, under any name
    for env in (seen["kernel"], seen["child"]):
        assert not set(env) & {*SERVER_TOKEN_ENV, *HUB_TOKEN_ENV}
        assert token not in env.values()
        assert HUB_TOKEN not in env.values()
        # And both carry the kernel's own id and its own, different token
        assert env[KERNEL_ID_ENV] == kernel_id
        assert env["TFGPU_KERNEL_TOKEN"] and env["TFGPU_KERNEL_TOKEN"] != token


@pytest.fixture
def tfgpu_config(request):
    """The root conftest's settings, plus keep_hub_token_in_kernels where a test asks."""
    config = {"backend": "simulated", "sample_interval": 0.2, "history_seconds": 60}
    config.update(getattr(request, "param", {}))
    return config


@pytest.mark.parametrize("tfgpu_config", [{"keep_hub_token_in_kernels": True}], indirect=True)
async def test_an_admin_can_keep_the_hub_token_in_kernels(jp_fetch, jp_serverapp, server_env):
    """keep_hub_token_in_kernels leaves the hub's token; the server's own still goes."""
    # Given the admin chose to leave the hub token to notebooks
    # When a kernel starts
    session = await start_session(jp_fetch, "hub.ipynb")
    seen = await run_json(jp_serverapp, session["kernel"]["id"], READ_ENV)
    # Then it has the hub token under both names, and not the server's token
    env = seen["kernel"]
    assert all(env[name] == HUB_TOKEN for name in HUB_TOKEN_ENV)
    assert not set(env) & set(SERVER_TOKEN_ENV)
    assert server_env not in env.values()

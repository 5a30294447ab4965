"""Odd input never stops a kernel from starting: odd session names, policies that cannot be
applied, a store that cannot be read. The kernel then starts with the admin default and says why.

Real server, real kernels, the simulated backend.
"""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.kernel_helpers import kernel_headers, kernel_token, run_json, start_session

SPEC = OpenAPI.from_dict(
    yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
)
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
ADMIN_DEFAULT = {"memory_growth": True}
READ_POLICY = "import json, os; print(json.dumps(json.loads(os.environ['TFGPU_POLICY'])))"


@pytest.fixture
def store_is_a_folder() -> bool:
    """Whether the policy store path is a folder (parametrize to make it one)."""
    return False


@pytest.fixture
def tfgpu_config(tmp_path, store_is_a_folder):
    """The simulated backend, an admin default to recognise, and a store of the test's own."""
    store = tmp_path / "state" / "policies.json"
    if store_is_a_folder:
        store.mkdir(parents=True)
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "default_policy": ADMIN_DEFAULT,
        "policy_store_path": str(store),
    }


@pytest.fixture
def notebook(jp_root_dir) -> str:
    """An empty notebook at the server root."""
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    return "nb.ipynb"


async def kernel_view(jp_fetch, kernel_id: str) -> dict:
    """GET kernels/{id}, checked against the shipped OpenAPI spec."""
    response = await jp_fetch("tfgpu", "api", "kernels", kernel_id)
    request = MockRequest("http://localhost", "get", f"/tfgpu/api/kernels/{kernel_id}")
    SPEC.validate_response(
        request, MockResponse(response.body, status_code=200, content_type="application/json")
    )
    return json.loads(response.body)


@pytest.mark.parametrize("name", ["", ".", "../x.ipynb"], ids=["empty", "dot", "dotdot"])
async def test_a_session_name_that_names_no_notebook_starts_with_the_admin_default(
    jp_fetch, jp_serverapp, notebook, name
):
    """JupyterLab sends the file name; another client may send "" or ".": no 500, a kernel."""
    # Given a notebook, opened by a client that sends an odd session name
    body = {"path": notebook, "name": name, "type": "notebook", "kernel": {"name": "python3"}}

    # When the session is created
    response = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))

    # Then it is created, and its kernel runs with the admin default and no notebook key
    assert response.code == 201
    kernel_id = json.loads(response.body)["kernel"]["id"]
    document = await run_json(jp_serverapp, kernel_id, READ_POLICY)
    assert document["notebook"] is None
    assert document["memory_growth"] is True
    assert "error" not in document


async def test_a_policy_that_cannot_be_applied_starts_the_kernel_with_the_admin_default(
    jp_fetch, jp_serverapp, notebook, monkeypatch
):
    """Placement breaks at a kernel start: the kernel starts anyway and the API says why."""
    # Given a notebook asking for automatic placement, and placement broken by a bug
    policies = jp_serverapp.web_app.settings["tfgpu_services"].policies

    def broken(*args, **kwargs):
        raise RuntimeError("placement is broken")

    monkeypatch.setattr(policies.placement, "choose", broken)
    await jp_fetch(
        "tfgpu", "api", "policies", notebook, method="PUT",
        body=json.dumps({"devices": "auto", "gpu_count": 2}),
    )

    # When the notebook is opened
    session = await start_session(jp_fetch, notebook)
    kernel_id = session["kernel"]["id"]

    # Then the kernel runs with the admin default, and GET kernels/{id} says why
    document = await run_json(jp_serverapp, kernel_id, READ_POLICY)
    assert document["memory_growth"] is True
    assert document["devices"] is None
    assert "RuntimeError: placement is broken" in document["error"]
    view = await kernel_view(jp_fetch, kernel_id)
    assert view["applied"]["error"] == document["error"]
    assert view["restart_required"] is False


@pytest.mark.parametrize("store_is_a_folder", [True], ids=["store-is-a-folder"])
async def test_a_kernel_starts_with_the_admin_default_when_the_store_cannot_be_read(
    jp_fetch, jp_serverapp, notebook
):
    """The store path is a folder: the server serves and kernels start with the admin default."""
    # Given a server whose policy store cannot be read
    # When a notebook is opened, and its kernel tries to change its policy (as %tfgpu does)
    session = await start_session(jp_fetch, notebook)
    document = await run_json(jp_serverapp, session["kernel"]["id"], READ_POLICY)
    token = await kernel_token(jp_serverapp, session["kernel"]["id"])
    response = await jp_fetch(
        "tfgpu", "api", "kernel", "policy", method="PUT", body=json.dumps({"devices": []}),
        headers=kernel_headers(token), raise_error=False,
    )

    # Then its kernel runs with the admin default, and the change is refused saying why
    assert document["notebook"] == notebook
    assert document["memory_growth"] is True
    assert response.code == 503
    answer = json.loads(response.body)
    assert answer["reason"] == "policy store unavailable"
    assert "IsADirectoryError" in answer["message"]

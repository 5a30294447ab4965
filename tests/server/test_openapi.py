"""The OpenAPI spec shipped in the package describes every route, and the server keeps to it."""

import json
import re
from importlib.resources import files

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from jupyter_tfgpu.server.api.routes import ROUTES

SPEC = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())


def spec_path(route: str) -> str:
    """A tornado route pattern as an OpenAPI path template."""
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)


def test_every_route_is_in_the_spec():
    """No handler is registered that the spec does not document."""
    # Given the routes the extension registers
    paths = {spec_path(route) for route, _ in ROUTES}
    # Then each one is a path of the spec, and the spec documents nothing that is not served
    assert paths == set(SPEC["paths"])


def test_the_spec_is_valid_openapi():
    """The shipped document is a valid OpenAPI 3 spec."""
    from openapi_spec_validator import validate

    validate(SPEC)


@pytest.mark.parametrize(
    "path,query",
    [
        ("status", ""),
        ("gpus", ""),
        ("gpus", "pcie=true"),
        ("gpus/history", "seconds=30"),
        ("config", ""),
    ],
)
async def test_responses_validate_against_the_spec(jp_fetch, path, query):
    """What the server answers is what the spec promises."""
    # Given a running server with the simulated backend
    params = dict(p.split("=") for p in query.split("&")) if query else {}
    # When the endpoint is fetched
    response = await jp_fetch("tfgpu", "api", *path.split("/"), params=params)
    # Then the body validates against the spec's response schema
    request = MockRequest("http://localhost", "get", f"/tfgpu/api/{path}", args=params)
    body = MockResponse(response.body, status_code=response.code, content_type="application/json")
    OpenAPI.from_dict(SPEC).validate_response(request, body)
    assert json.loads(response.body)


async def test_errors_validate_against_the_spec(jp_fetch):
    """A bad query answers the documented JSON error that names the field."""
    from tornado.httpclient import HTTPClientError

    # When history is asked for with a bad number
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("tfgpu", "api", "gpus", "history", params={"seconds": "soon"})
    # Then it is a 400 whose JSON body names the field
    assert err.value.code == 400
    body = err.value.response.body
    assert "seconds" in json.loads(body)["message"]
    request = MockRequest("http://localhost", "get", "/tfgpu/api/gpus/history", args={"seconds": "soon"})
    OpenAPI.from_dict(SPEC).validate_response(
        request, MockResponse(body, status_code=400, content_type="application/json")
    )


def test_the_spec_embeds_the_current_policy_schema():
    """Run `python scripts/sync_openapi.py` after changing policy.schema.json."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    check = subprocess.run([sys.executable, "scripts/sync_openapi.py", "--check"], cwd=root)
    assert check.returncode == 0


def test_the_config_schema_is_closed_and_names_every_setting_get_config_shows():
    """A field added to GET config without the spec fails: the schema allows no other field,
    requires every one it names, and names every cap and shown sampling setting."""
    from jupyter_tfgpu.policy import AdminPolicy
    from jupyter_tfgpu.server.services import SAMPLING

    schema = SPEC["components"]["schemas"]["Config"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])
    shown = set(AdminPolicy.settings()) | {name for name, (_, is_shown) in SAMPLING.items() if is_shown}
    others = {"backend", "policy_store_path", "provisioner", "enforcement", "problems"}
    assert shown | others <= set(schema["properties"])

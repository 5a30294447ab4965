"""REST calls whose answers are checked against the OpenAPI spec, for server tests."""

from __future__ import annotations

import json
from importlib.resources import files

import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

SPEC = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())


async def get_checked(jp_fetch, *path: str) -> dict:
    """GET a route of the API, its answer checked against the spec; the answer's JSON."""
    response = await jp_fetch("tfgpu", "api", *path)
    request = MockRequest("http://localhost", "get", "/tfgpu/api/" + "/".join(path))
    body = MockResponse(response.body, status_code=response.code, content_type="application/json")
    OpenAPI.from_dict(SPEC).validate_response(request, body)
    return json.loads(response.body)

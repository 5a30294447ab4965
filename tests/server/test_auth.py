"""Every handler is authenticated and authorized; nothing answers without credentials."""

import re

import pytest
from jupyter_server.base.handlers import APIHandler
from jupyter_server.serverapp import ServerWebApplication
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketHandler

from jupyter_tfgpu.server.api.routes import ROUTES

VERBS = ("get", "put", "post", "patch", "delete")


def _wrapper_names(method) -> list[str]:
    """Qualified names of the decorators wrapped around a handler method, outermost first."""
    names = []
    while method is not None:
        names.append(getattr(getattr(method, "__code__", None), "co_qualname", ""))
        method = getattr(method, "__wrapped__", None)
    return names


@pytest.mark.parametrize("route,handler", ROUTES)
def test_every_verb_is_authenticated(route, handler):
    """jupyter_server's own check finds no verb left open."""
    # When jupyter_server inspects the handler as it does at start-up
    missing = ServerWebApplication._check_handler_auth(None, route, handler)
    # Then no verb is reported unauthenticated
    assert missing == []


@pytest.mark.parametrize("route,handler", [r for r in ROUTES if issubclass(r[1], APIHandler)])
def test_every_rest_verb_is_authenticated_then_authorized(route, handler):
    """@web.authenticated sits above @authorized on every implemented REST verb."""
    for verb in VERBS:
        method = getattr(handler, verb)
        if method is getattr(APIHandler, verb):
            continue
        names = _wrapper_names(method)
        # Then the outer decorator authenticates, the next one authorizes
        assert names[0].startswith("authenticated"), (verb, names)
        assert names[1].startswith("authorized"), (verb, names)
        assert handler.auth_resource == "tfgpu"


@pytest.mark.parametrize("route,handler", [r for r in ROUTES if issubclass(r[1], WebSocketHandler)])
def test_websockets_use_ws_authenticated(route, handler):
    """Websocket upgrades are authenticated with jupyter_server's ws_authenticated."""
    assert _wrapper_names(handler.get)[0].startswith("ws_authenticated")


NO_CREDENTIALS = {"Authorization": ""}  # overrides the token jp_fetch would add


def sample_path(route: str) -> str:
    """A concrete URL path for a route pattern (path groups filled with sample values)."""
    return re.sub(r"\(\?P<\w+>[^)]*\)", "sample", route)


@pytest.mark.parametrize("route", [r for r, h in ROUTES if not issubclass(h, WebSocketHandler)])
async def test_rest_routes_refuse_requests_without_credentials(jp_fetch, route):
    """A request with no token and no cookie gets 403, never data."""
    # When the route is fetched without credentials
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("tfgpu", "api", *sample_path(route).split("/"), headers=dict(NO_CREDENTIALS))
    # Then it is refused
    assert err.value.code == 403


async def test_stream_refuses_websocket_without_credentials(jp_ws_fetch):
    """The websocket upgrade is refused without credentials."""
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("tfgpu", "api", "stream", headers=dict(NO_CREDENTIALS))
    assert err.value.code == 403


async def test_routes_live_under_base_url_only(http_server_client, jp_auth_header, jp_base_url):
    """The API is under base_url; the same path at the root is not served."""
    # Given credentials, the route answers under base_url ...
    ok = await http_server_client.fetch(f"{jp_base_url}tfgpu/api/status", headers=jp_auth_header)
    assert ok.code == 200
    # ... and not at the server root
    with pytest.raises(HTTPClientError) as err:
        await http_server_client.fetch("/tfgpu/api/status", headers=jp_auth_header)
    assert err.value.code == 404

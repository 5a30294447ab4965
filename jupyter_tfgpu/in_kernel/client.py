"""The kernel's one way to the jupyter-tfgpu server: its kernel channel, over urllib.

A kernel the server started has ``TFGPU_SERVER_URL`` (ending in ``/``) and ``TFGPU_KERNEL_TOKEN``
(a token for this kernel alone) in its environment. The token is read when the client is made,
kept in an object that never shows it, sent only in the ``Authorization`` header, never to a
proxy or through a redirect, and never put in an error message: every failure becomes a
``ServerError`` raised without its cause, so no traceback can show a frame holding the token.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from jupyter_tfgpu.protocol import AUTH_SCHEME, KERNEL_TOKEN_ENV, SERVER_URL_ENV

API = "tfgpu/api/kernel/"
TIMEOUT = 5.0


class ServerError(Exception):
    """A request to the server failed; ``str()`` is a sentence a user can act on."""

    kind = "error"

    def __init__(self, message: str, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotConfigured(ServerError):
    """This kernel was not started by a jupyter-tfgpu server (no server URL or token)."""

    kind = "not_configured"


class Unreachable(ServerError):
    """The server did not answer (stopped, restarted on another port, network)."""

    kind = "unreachable"


class TokenRefused(ServerError):
    """The server does not accept this kernel's token (e.g. it restarted since)."""

    kind = "token_refused"


class Refused(ServerError):
    """The server refused the request: bad input (400), an admin cap (403), no notebook (409)."""

    kind = "refused"


class RateLimited(ServerError):
    """The server limits this kernel's requests of this kind (429): ``limit`` is the server's
    sentence, and one request fits again ``retry_after`` seconds on. Until then the client
    refuses the same request itself, without sending it."""

    kind = "rate_limited"

    def __init__(self, limit: str, retry_after: float, reason: str | None = None):
        wait = max(1, math.ceil(retry_after))
        super().__init__(f"{limit}; try again in {wait} s", 429, reason)
        self.limit = limit
        self.retry_after = retry_after


class _Secret:
    """Holds the token; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def header(self) -> str:
        return f"{AUTH_SCHEME} {self._value}"

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled along with a client
        raise TypeError("the kernel token cannot be pickled")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header wherever it points: refuse it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


class ServerClient:
    """GET/PUT/DELETE on ``{TFGPU_SERVER_URL}tfgpu/api/kernel/...`` with this kernel's token."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self._token = _Secret(token)
        self.timeout = timeout
        self.clock = clock
        # (method, route) -> (when it may be sent again, the server's refusal): a loop that
        # polls (a panel, the PolicyEditor) does not ask again before the server said to.
        self._refused: dict[tuple[str, str], tuple[float, RateLimited]] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerClient:
        """The client for this kernel, or ``NotConfigured`` outside a jupyter-tfgpu kernel."""
        env = os.environ if environ is None else environ
        url, token = env.get(SERVER_URL_ENV), env.get(KERNEL_TOKEN_ENV)
        if not url or not token:
            raise NotConfigured(
                "this kernel was not started by a Jupyter server with jupyter-tfgpu "
                f"({SERVER_URL_ENV} / {KERNEL_TOKEN_ENV} are not set); policies need the server"
            )
        return cls(url, token)

    def __repr__(self) -> str:
        return f"ServerClient({self.url!r})"

    # -- the kernel channel ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """GPUs (this kernel's processes marked ``mine``) and this kernel's view."""
        return self._request("GET", "status")

    def policy(self) -> dict[str, Any]:
        """This kernel: its notebook's policy, what it started with, restart_required."""
        return self._request("GET", "policy")

    def set_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """Store this notebook's own policy (the whole of it); the kernel's view after."""
        return self._request("PUT", "policy", policy)

    def reset_policy(self) -> dict[str, Any]:
        """Remove this notebook's own policy; the kernel's view after."""
        return self._request("DELETE", "policy")

    def applied_here(self) -> dict[str, Any]:
        """Tell the server this kernel now runs with its notebook's current policy (applied
        in-process), so it stops showing "restart required"."""
        return self._request("POST", "applied", {})

    def history(self, seconds: float) -> dict[str, Any]:
        """The server's recent per-GPU time series."""
        return self._request("GET", "history?" + urllib.parse.urlencode({"seconds": seconds}))

    # -- one request -------------------------------------------------------------------------

    def _request(self, method: str, route: str, body: Any = None) -> dict[str, Any]:
        """One JSON request; every failure is a ``ServerError`` without a chained cause."""
        key = (method, route.split("?", 1)[0])
        refused = self._refused.get(key)
        if refused is not None:
            wait = refused[0] - self.clock()
            if wait > 0:
                raise RateLimited(refused[1].limit, wait, refused[1].reason)
            del self._refused[key]
        failure = self._send(method, route, body)
        if isinstance(failure, RateLimited):
            self._refused[key] = (self.clock() + failure.retry_after, failure)
        if isinstance(failure, ServerError):
            raise failure
        return failure

    def _send(self, method: str, route: str, body: Any) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + API + route,
            data=data,
            method=method,
            headers={"Authorization": self._token.header(), "Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                text = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status, text = exc.code, _read(exc)
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            exc.close()
            return _http_error(status, text, route, retry_after)
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, resets: keep the kind only
            why = type(getattr(exc, "reason", None) or exc).__name__
            return Unreachable(f"the jupyter-tfgpu server at {self.url} is not reachable ({why})")
        finally:
            del request  # the one object holding the token's header
        if not 200 <= status < 300:
            return _http_error(status, text, route)
        if not text:
            return {}
        try:
            return json.loads(text)
        except ValueError:
            return ServerError(f"the server answered {route} with something other than JSON")


def _read(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except Exception:  # noqa: BLE001 - a body we cannot read is no body
        return b""


def _seconds(header: str | None) -> float:
    """``Retry-After`` in seconds (1 when absent or not a number of seconds)."""
    try:
        seconds = float(header or "")
    except ValueError:
        return 1.0
    return min(3600.0, seconds) if math.isfinite(seconds) and seconds > 0 else 1.0


def _http_error(
    status: int, text: bytes, route: str, retry_after: str | None = None
) -> ServerError:
    """The server's own ``{"message", "reason"}`` as the right ServerError."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    message = str(payload.get("message") or f"HTTP {status}")
    reason = payload.get("reason") if isinstance(payload.get("reason"), str) else None
    if status == 403 and not (reason or "").startswith("over admin cap"):
        return TokenRefused(
            "the server refused this kernel's token (HTTP 403); it was issued to an earlier "
            "start of this kernel or by a server that has since restarted: restart the kernel",
            status,
            reason,
        )
    if status in (400, 403, 409):
        return Refused(message, status, reason)
    if status == 429:
        return RateLimited(message, _seconds(retry_after), reason)
    if status == 404:
        return ServerError(
            f"the server has no kernel/{route.split('?')[0]} route (an older jupyter-tfgpu?)",
            status,
            reason,
        )
    return ServerError(f"the server answered HTTP {status}: {message}", status, reason)

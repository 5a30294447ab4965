"""Handlers of the kernel channel: ``tfgpu/api/kernel/...``, authenticated by a kernel token.

These routes act on the notebook of the kernel whose token is presented (there is no path or
id to name another one). They accept no user credentials, and user routes accept no kernel
token. A kernel's token can be read by other processes of the server's OS user: see
``server/kernels/channel.py`` for what the channel holds against, and what not.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import IdentityProvider
from tornado import web

from jupyter_tfgpu.protocol import AUTH_SCHEME
from jupyter_tfgpu.server.api.handlers import HistoryHandler, TFGPUAPIHandler
from jupyter_tfgpu.server.kernels.channel import (
    CHANNEL_LIMITS,
    MAX_BODY_BYTES,
    KernelIdentity,
    KernelReports,
    validate_report,
)
from jupyter_tfgpu.policy import CapExceeded, PolicyError


class KernelScopeAuthorizer(Authorizer):
    """Allows a kernel identity the ``tfgpu`` resource, and nothing else."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        """Only kernel identities, only for this extension's resource."""
        return isinstance(user, KernelIdentity) and resource == "tfgpu"


class KernelTokenIdentityProvider(IdentityProvider):
    """Knows no users: the caller is the running kernel whose token is in ``Authorization``."""

    def get_user(self, handler: Any) -> KernelIdentity | None:  # type: ignore[override]
        """The calling kernel, or None (refused) for any other token or a kernel that is gone."""
        services = handler.services
        identity = services.tokens.identify(handler.request.headers.get("Authorization"))
        if identity is None or not services.kernels.has(identity.kernel_id):
            return None
        return identity


_AUTHORIZER = KernelScopeAuthorizer()
_IDENTITY_PROVIDER = KernelTokenIdentityProvider()


class TooManyRequests(web.HTTPError):
    """A 429 naming the budget that was spent; ``Retry-After`` says when one request fits."""

    def __init__(self, kind: str, retry_after: float) -> None:
        limit = CHANNEL_LIMITS[kind]
        super().__init__(429, limit.describe(), reason=f"too many {limit.what}")
        self.retry_after = max(1, math.ceil(retry_after))


@web.stream_request_body
class KernelChannelHandler(TFGPUAPIHandler):
    """Base of the kernel routes: the caller is a kernel, identified by its token.

    The body is streamed (``prepare`` runs on the headers) so that its size limit holds while it
    is read: tornado would otherwise buffer up to the server-wide limit (512 MiB) first.
    """

    # A reporter's background requests are not the user's activity (it would keep an idle
    # server from being culled).
    _track_activity = False
    # Which budget of CHANNEL_LIMITS each method's requests count against.
    limits: dict[str, str] = {"GET": "read"}

    @property
    def identity_provider(self) -> IdentityProvider:  # type: ignore[override]
        """Kernel requests are identified by kernel token, never by user credentials."""
        return _IDENTITY_PROVIDER

    @property
    def authorizer(self) -> Authorizer:  # type: ignore[override]
        """Kernel requests are authorized by kernel scope, not by the server's authorizer."""
        return _AUTHORIZER

    def get_login_url(self) -> str:
        """There is no login for a kernel: refuse, saying what is needed."""
        raise web.HTTPError(403, f"a valid {AUTH_SCHEME} token is required")

    async def prepare(self) -> None:  # type: ignore[override]
        """The body's size limit, jupyter_server's request checks (Host, origin, identity), then
        a body announced as too large is refused before it is read."""
        self._body = bytearray()
        # tornado's max_body_size is server-wide; a kernel gets far less. Set first, so that
        # even a refused request's body is not read: tornado closes the connection instead,
        # also when a chunked body grows past it.
        self.request.connection.set_max_body_size(MAX_BODY_BYTES)
        await super().prepare()
        self.check_rate()
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise self.too_large()

    def check_rate(self) -> None:
        """Count this request against the kernel's budget for its kind; 429 when it is spent.

        Before the body is read: a kernel over its budget costs no parsing, no store write."""
        kind = self.limits.get(self.request.method or "")
        if kind is None or not isinstance(self.current_user, KernelIdentity):
            return  # an unknown caller is refused by @web.authenticated, with no bucket made
        wait = self.reports.limiter.take(self.current_user.kernel_id, kind)
        if wait > 0:
            raise TooManyRequests(kind, wait)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON as every API error; a 429 also says when to try again (``Retry-After``)."""
        exc_info = kwargs.get("exc_info")
        refused = exc_info[1] if exc_info else None
        if not isinstance(refused, TooManyRequests):
            super().write_error(status_code, **kwargs)
            return
        # The same body as APIHandler's, without its "wrote error" log line: a refused flood is
        # logged once per request, by the access log.
        self.set_header("Retry-After", str(refused.retry_after))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": refused.log_message, "reason": refused.reason}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A refused flood is in the access log already, once per request: no second line."""
        if isinstance(value, TooManyRequests):
            return
        super().log_exception(typ, value, tb)

    def data_received(self, chunk: bytes) -> None:
        """A piece of the body; tornado stops at MAX_BODY_BYTES in all."""
        if not self._finished:
            self._body.extend(chunk)

    def too_large(self) -> web.HTTPError:
        """The 413 for a body over the kernel channel's limit."""
        return web.HTTPError(413, f"body: at most {MAX_BODY_BYTES} bytes", reason="body too large")

    def read_json_body(self) -> Any:
        """The streamed body as JSON, or a 400 saying it is not."""
        self.request.body = bytes(self._body)
        return super().read_json_body()

    def check_xsrf_cookie(self) -> None:
        """Kernel requests carry a header token and no cookie, so XSRF does not apply."""

    @property
    def reports(self) -> KernelReports:
        """The kernels' own memory reports."""
        return self.services.reports

    @property
    def kernel_id(self) -> str:
        """The calling kernel."""
        return self.current_user.kernel_id

    async def view(self) -> dict[str, Any]:
        """The calling kernel as ``GET kernels/{id}`` shows it, plus what only it needs: its
        notebook's ``own`` policy (to change one field) and ``next_start``, the environment and
        policy document a (re)start would give it now (to apply a change in-process)."""
        view = await self.kernels.describe(self.kernel_id)
        notebook = view["notebook"]
        policies = self.policies
        view["own"] = policies.own(notebook) if notebook else None
        # With the framework limit a start would apply (the cap less the CUDA context reserve).
        view["next_start"] = self.kernels.launches.next_start(self.kernel_id, notebook)
        return view

    def notebook(self) -> str:
        """The calling kernel's notebook, or 409 when it has none."""
        notebook = self.kernels.notebook_of(self.kernel_id)
        if notebook is None:
            raise web.HTTPError(
                409, "this kernel was not started for a notebook", reason="no notebook"
            )
        return notebook


class KernelReportHandler(KernelChannelHandler):
    """POST kernel/report: the framework's own GPU memory figures, from inside the kernel."""

    limits = {"POST": "report"}

    @web.authenticated
    @authorized
    def post(self) -> None:
        """Store the report (used where NVML's PIDs cannot be matched, e.g. in containers)."""
        try:
            report = validate_report(self.read_json_body())
        except ValueError as err:
            field = str(err).split(":", 1)[0]
            raise self.bad_request(field, str(err).split(": ", 1)[-1]) from None
        self.reports.put(self.kernel_id, report)
        self.set_status(204)
        self.finish()


class KernelPolicyHandler(KernelChannelHandler):
    """GET/PUT/DELETE kernel/policy: the calling kernel's notebook's policy."""

    limits = {"GET": "read", "PUT": "policy", "DELETE": "policy"}

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Own and effective policy, what this kernel started with, and restart_required."""
        self.write_json(await self.view())

    @web.authenticated
    @authorized
    async def put(self) -> None:
        """Set this notebook's policy (same checks as the user API)."""
        key = self.notebook()
        body = self.read_json_body()
        try:
            await asyncio.to_thread(self.policies.set, key, body)
        except (PolicyError, CapExceeded) as err:
            raise self.domain_error(err) from None
        self.write_json(await self.view())

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        """Remove this notebook's own policy."""
        key = self.notebook()
        try:
            await asyncio.to_thread(self.policies.reset, key)
        except CapExceeded as err:
            raise self.domain_error(err) from None
        self.write_json(await self.view())


class KernelStatusHandler(KernelChannelHandler):
    """GET kernel/status: the GPUs as the server sees them, and this kernel's view."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """GPU snapshot (other kernels' processes shown without their id or notebook, with how
        long their kernel has been idle) + this kernel + the idle reaping in force."""
        snapshot = self.sampler.latest
        mine = self.kernel_id
        idle = {facts.kernel_id: facts.idle_seconds for facts in self.kernels.facts()}

        def row(process: Any) -> dict[str, Any]:
            seconds = idle.get(process.kernel_id) if process.kernel_id else None
            shown = {**process.to_json(), "mine": process.kernel_id == mine}
            if not shown["mine"]:
                shown.update(kernel_id=None, notebook=None)
            shown["idle_seconds"] = None if seconds is None else round(seconds, 1)
            return shown

        gpus = [
            {**gpu.to_json(), "processes": [row(p) for p in gpu.processes]}
            for gpu in snapshot.gpus
        ]
        rules = self.services.enforcer.rules
        self.write_json(
            {
                "available": self.sampler.available,
                "reason": self.sampler.reason,
                "configured_backend": self.services.configured_backend,
                "retry_in": self.sampler.retry_in,
                "simulated": self.sampler.simulated,
                "timestamp": snapshot.timestamp,
                "gpus": gpus,
                "kernel": await self.view(),
                "idle_reaping": {
                    "timeout": rules.idle_timeout,
                    "min_memory_mb": rules.idle_min_memory_mb,
                    "action": rules.idle_action,
                }
                if rules.idle_timeout > 0
                else None,
            }
        )


class KernelHistoryHandler(KernelChannelHandler, HistoryHandler):
    """GET kernel/history?seconds=N: the server's GPU time series (GPU-wide, no per-process data),
    for the sparklines of the in-notebook panel."""


class KernelAppliedHandler(KernelChannelHandler):
    """POST kernel/applied: the kernel applied its notebook's current policy in-process."""

    limits = {"POST": "applied"}

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Record the server's own rendering of the current policy as what the kernel runs."""
        self.kernels.launches.applied_in_process(self.kernel_id, self.notebook())
        self.write_json(await self.view())


KERNEL_ROUTES: list[tuple[str, type]] = [
    ("kernel/report", KernelReportHandler),
    ("kernel/policy", KernelPolicyHandler),
    ("kernel/applied", KernelAppliedHandler),
    ("kernel/status", KernelStatusHandler),
    ("kernel/history", KernelHistoryHandler),
]

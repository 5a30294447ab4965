"""Thin tornado handlers: translate HTTP and websockets to the sampler and back."""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketHandler

from jupyter_tfgpu._version import __version__
from jupyter_tfgpu.server.api.backpressure import BoundedOutputMixin
from jupyter_tfgpu.server.stream import ClientOutputs
from jupyter_tfgpu.policy import CapExceeded, PolicyError, StoreUnavailable
from jupyter_tfgpu.server.kernels.registry import KernelGone

if TYPE_CHECKING:
    from jupyter_tfgpu.policy import PolicyService
    from jupyter_tfgpu.server.kernels.registry import KernelRegistry
    from jupyter_tfgpu.server.sampling.sampler import Sampler, Snapshot
    from jupyter_tfgpu.server.services import Services

AUTH_RESOURCE = "tfgpu"
# Where the extension app puts its services in the tornado settings (the app itself is under
# jupyter_server's own key, "jupyter_tfgpu"; handlers do not use it).
SERVICES_KEY = "tfgpu_services"
DOMAIN_ERRORS = (PolicyError, CapExceeded, StoreUnavailable, KernelGone)


class ServicesMixin:
    """The services a handler reaches, each through one short property."""

    settings: dict[str, Any]

    @property
    def services(self) -> Services:
        """The extension's services."""
        return self.settings[SERVICES_KEY]

    @property
    def sampler(self) -> Sampler:
        """The server's one sampler."""
        return self.services.sampler

    @property
    def policies(self) -> PolicyService:
        """The server's policies."""
        return self.services.policies

    @property
    def kernels(self) -> KernelRegistry:
        """The server's kernels."""
        return self.services.kernels


class TFGPUAPIHandler(ServicesMixin, APIHandler):
    """Base for every REST handler: JSON answers (errors too), resource ``tfgpu``."""

    auth_resource = AUTH_RESOURCE

    def write_json(self, data: Any) -> None:
        """Finish with a JSON body."""
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def bad_request(self, field: str, why: str) -> web.HTTPError:
        """A 400 that names the field and says why."""
        return web.HTTPError(400, f"{field}: {why}", reason=f"invalid {field}")

    def domain_error(self, err: Exception) -> web.HTTPError:
        """Translate the domain's errors to HTTP (400 names the field, 403 the cap, 503 says why
        the store cannot be written, 404 a kernel that stopped, maybe during an await)."""
        if isinstance(err, PolicyError):
            return web.HTTPError(400, str(err), reason=f"invalid {err.field}")
        if isinstance(err, CapExceeded):
            return web.HTTPError(403, str(err), reason=f"over admin cap {err.cap}")
        if isinstance(err, StoreUnavailable):
            return web.HTTPError(503, err.message, reason="policy store unavailable")
        if isinstance(err, KernelGone):
            return web.HTTPError(404, str(err), reason="no such kernel")
        raise err

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """A domain error no handler caught still gets its status and JSON, not a 500."""
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], DOMAIN_ERRORS):
            http = self.domain_error(exc_info[1])
            status_code, kwargs["exc_info"] = http.status_code, (type(http), http, exc_info[2])
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Domain errors are answers, not crashes: one warning line, no traceback."""
        if isinstance(value, DOMAIN_ERRORS):
            self.log.warning("%s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def read_json_body(self) -> Any:
        """The request body as JSON, or a 400 saying it is not."""
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, RecursionError) as err:  # RecursionError: deeply nested arrays
            raise self.bad_request("body", f"not valid JSON ({err})") from None


class StatusHandler(TFGPUAPIHandler):
    """GET status: which backend, whether it works, and what the sampler measured."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Describe the backend and sampler."""
        sampler = self.sampler
        backend = sampler.backend.name if sampler.backend is not None and sampler.available else "none"
        self.write_json(
            {
                "backend": backend,
                "configured_backend": self.services.configured_backend,
                "available": sampler.available,
                "reason": sampler.reason,
                "retry_in": sampler.retry_in,
                "simulated": sampler.simulated,
                "device_count": sampler.device_count,
                "sample_interval": sampler.interval,
                "history_seconds": sampler.history_seconds,
                "versions": {"extension": __version__, **sampler.versions},
                "sampler": sampler.describe(),
                "context_reserve": self.services.context_reserve_json(),
                "hard_caps": self.services.hard_caps.to_json(),
            }
        )


class GpusHandler(TFGPUAPIHandler):
    """GET gpus: the latest snapshot, served from memory."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """The last snapshot; ``?pcie=true`` turns PCIe sampling on for a while."""
        if self.get_query_argument("pcie", "false").lower() in ("1", "true", "yes"):
            self.sampler.request_pcie()
        self.set_header("Content-Type", "application/json")
        self.finish(self.sampler.latest.text)


class HistoryHandler(TFGPUAPIHandler):
    """GET gpus/history?seconds=N: compact time series from the server's ring buffer."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """The last N seconds (default 300, at most ``history_seconds``)."""
        raw = self.get_query_argument("seconds", "300")
        try:
            seconds = float(raw)
        except ValueError:
            raise self.bad_request("seconds", f"expected a number of seconds, got {raw!r}") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise self.bad_request("seconds", "must be a positive number")
        seconds = min(seconds, float(self.sampler.history_seconds))
        # An hour of 8 GPUs is ~1 MB of JSON: build it off the event loop.
        body = await asyncio.to_thread(
            lambda: json.dumps({"seconds": seconds, **self.sampler.history(seconds)})
        )
        self.set_header("Content-Type", "application/json")
        self.finish(body)


class StreamHandler(
    ServicesMixin, BoundedOutputMixin, WebSocketMixin, WebSocketHandler, JupyterHandler
):
    """WS stream: pushes every snapshot as it is taken: GET gpus's JSON plus ``kernels``.

    A client that reads slower than snapshots come skips to the latest one (BoundedOutputMixin).
    A client may send ``{"pcie": true}`` to have PCIe throughput sampled while it watches.
    """

    auth_resource = AUTH_RESOURCE

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Authorize, then upgrade to a websocket."""
        if not self.authorizer.is_authorized(self, self.current_user, "read", AUTH_RESOURCE):
            raise web.HTTPError(403)
        await super().get(*args, **kwargs)

    def client_outputs(self) -> ClientOutputs:
        """Stream clients are counted with the stream's messages."""
        return self.services.stream.clients

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Send the latest snapshot at once, then every new one."""
        super().open(*args, **kwargs)
        sampler = self.sampler
        self._release_pcie = None
        self._unsubscribe = sampler.subscribe(self._send)
        self._unsubscribe_policies = self.services.stream.on_policy_change(self._send)
        self._send()

    def _send(self, snapshot: Snapshot | None = None) -> None:
        """The latest message, now or once the one in flight is written (then maybe newer)."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        self.send_latest(lambda: self.services.stream.message(self.sampler.latest))

    def on_message(self, message: str | bytes) -> None:
        """``{"pcie": bool}`` turns PCIe sampling on or off for this client."""
        try:
            request = json.loads(message)
        except ValueError:
            return
        if not isinstance(request, dict) or "pcie" not in request:
            return
        sampler = self.sampler
        if request["pcie"] and self._release_pcie is None:
            self._release_pcie = sampler.watch_pcie()
        elif not request["pcie"] and self._release_pcie is not None:
            self._release_pcie()
            self._release_pcie = None

    def on_close(self) -> None:
        """Stop sending; release PCIe sampling."""
        super().on_close()
        if getattr(self, "_unsubscribe", None):
            self._unsubscribe()
        if getattr(self, "_unsubscribe_policies", None):
            self._unsubscribe_policies()
        if getattr(self, "_release_pcie", None):
            self._release_pcie()
            self._release_pcie = None


class PoliciesHandler(TFGPUAPIHandler):
    """GET policies: every stored notebook policy, the admin default, and store problems."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """List stored policies."""
        policies = self.policies
        self.write_json(
            {"policies": policies.all(), "default": policies.default, "problems": policies.problems}
        )


class PolicyHandler(TFGPUAPIHandler):
    """GET/PUT/DELETE policies/{notebook path}: one notebook's own and effective policy."""

    def _key(self, path: str) -> str:
        try:
            return self.policies.keys.key(path)
        except PolicyError as err:
            raise self.domain_error(err) from None

    @web.authenticated
    @authorized
    def get(self, path: str) -> None:
        """The notebook's own policy (null if none) and its effective policy."""
        self.write_json(self.policies.describe(self._key(path)))

    @web.authenticated
    @authorized
    async def put(self, path: str) -> None:
        """Replace the notebook's policy; 400 names a bad field, 403 the cap it exceeds, 503
        says why the store cannot be written."""
        key = self._key(path)
        body = self.read_json_body()
        try:
            await asyncio.to_thread(self.policies.set, key, body)
        except DOMAIN_ERRORS as err:
            raise self.domain_error(err) from None
        self.write_json(self.policies.describe(key))

    @web.authenticated
    @authorized
    async def delete(self, path: str) -> None:
        """Remove the notebook's own policy (the admin default applies again)."""
        key = self._key(path)
        try:
            removed = await asyncio.to_thread(self.policies.reset, key)
        except (CapExceeded, StoreUnavailable) as err:
            raise self.domain_error(err) from None
        if not removed:
            raise web.HTTPError(404, f"no policy stored for {key!r}", reason="no such policy")
        self.set_status(204)
        self.finish()


class KernelsHandler(TFGPUAPIHandler):
    """GET kernels: every kernel with its notebook, GPU memory, policy and what it applied."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List kernels."""
        await self.kernels.refresh()
        self.write_json({"kernels": await self.kernels.list()})


class KernelHandler(TFGPUAPIHandler):
    """GET kernels/{id}: one kernel."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """Describe one kernel, or 404."""
        if not self.kernels.has(kernel_id):
            raise web.HTTPError(404, f"no kernel {kernel_id!r}", reason="no such kernel")
        await self.kernels.refresh()
        self.write_json(await self.kernels.describe(kernel_id))


class EnforcementHandler(TFGPUAPIHandler):
    """GET enforcement: the rules in force and the recent actions, with their reasons."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Rules and recent decisions, newest first."""
        enforcer = self.services.enforcer
        self.write_json(
            {
                "rules": enforcer.rules.to_json(),
                "enabled": enforcer.enabled,
                "recent": [{**d.to_event(), "time": d.time} for d in reversed(enforcer.recent)],
            }
        )


class ConfigHandler(TFGPUAPIHandler):
    """GET config: the admin settings in force (read-only)."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """Defaults, caps and sampling settings."""
        self.write_json(self.services.settings_json())

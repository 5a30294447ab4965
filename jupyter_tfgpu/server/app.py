"""The server extension: builds the services once per server, starts and stops them, and
registers the routes."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Instance

from jupyter_tfgpu.policy import PolicyError, StoreUnavailable, normalize_notebook_path
from jupyter_tfgpu.server.api.handlers import SERVICES_KEY
from jupyter_tfgpu.server.api.routes import route_patterns
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import check_devices
from jupyter_tfgpu.server.config_loading import (
    caps_in_force,
    check_settings,
    refuse_hard_caps,
    stop_unless_warned,
)
from jupyter_tfgpu.server.services import Services, build_services

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS_ACTIONS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class TFGPUApp(ExtensionApp):
    """Loads jupyter-tfgpu into a running jupyter_server."""

    name = "jupyter_tfgpu"
    load_other_extensions = True
    classes = [TFGPU]

    services = Instance(Services, allow_none=True)

    def initialize(self) -> None:
        """Load the extension; an error while it loads stops the server (TFGPU.on_config_error)."""
        # jupyter_server logs an extension that raises here and serves on without it, which
        # would leave kernels starting without the admin's caps.
        try:
            super().initialize()
        except Exception as err:
            stop_unless_warned(self.serverapp, self.log, err)
            raise

    def initialize_settings(self) -> None:
        """Build the services, start sampling, and hand the services to the handlers."""
        # Settings live in the server's config so `--TFGPU.x=...` and
        # `c.TFGPU.x = ...` in jupyter_server_config.py both reach them. A wrong one stops the
        # server here, before anything is built or served (TFGPU.on_config_error).
        cfg, problems, caps_file = check_settings(self.serverapp, self.log)
        self.services = services = build_services(cfg, self.serverapp, self.log, problems, caps_file)
        services.start(self._event_loop())
        if services.hard_caps.problem:  # a mode the admin named that cannot be used here
            refuse_hard_caps(self.serverapp, self.log, services.hard_caps.problem, services.problems)
        check_devices(cfg, services.sampler, services.problems, self.log)
        self.log.info(
            "%s",
            caps_in_force(
                services.settings, services.provisioner, caps_file, services.hard_caps.describe()
            ),
        )
        # The app itself is under settings["jupyter_tfgpu"] (jupyter_server puts it there);
        # handlers see only the services.
        self.settings[SERVICES_KEY] = services
        for schema_id, listener in self._listeners():
            self.serverapp.event_logger.add_listener(schema_id=schema_id, listener=listener)
        # The sampler logs "jupyter-tfgpu: backend X, N GPU(s)" once its worker has opened
        # the backend: nothing is known about the GPUs here.

    def initialize_handlers(self) -> None:
        """Register the REST and websocket routes."""
        self.handlers.extend(route_patterns())

    async def start_extension(self) -> None:
        """Keep kernel attribution fresh, and forget kernels that are gone, while the server runs."""
        self.services.keep_kernels_fresh()

    async def stop_extension(self) -> None:
        """Stop everything the services started, sampling included (NVML shut down)."""
        # No kernel or contents event reaches services that are stopping or stopped.
        for schema_id, listener in self._listeners():
            self.serverapp.event_logger.remove_listener(schema_id=schema_id, listener=listener)
        if self.services is not None:
            await self.services.stop()

    # -- events ------------------------------------------------------------------------------

    def _listeners(self) -> list[tuple[str, Any]]:
        """The server's events the extension follows, with their listeners (none without an
        event logger)."""
        if getattr(self.serverapp, "event_logger", None) is None:
            return []
        return [
            (KERNEL_ACTIONS, self._on_kernel_action),
            (CONTENTS_ACTIONS, self._on_contents_action),
        ]

    def _event_loop(self) -> asyncio.AbstractEventLoop | None:
        io_loop = getattr(self.serverapp, "io_loop", None)
        if io_loop is not None:
            return io_loop.asyncio_loop
        try:
            return asyncio.get_event_loop()
        except RuntimeError:
            return None

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """A kernel started, restarted or stopped: refresh attribution and process lists."""
        action = data.get("action")
        if action not in ("start", "restart", "shutdown") or data.get("status") == "error":
            return
        if action == "shutdown" and data.get("kernel_id"):
            self.services.kernels.forget(data["kernel_id"])
            # Off the loop, and not awaited: the kernel could have filled its record folder.
            asyncio.get_running_loop().run_in_executor(
                None, self.services.kernels.remove_record_folder, data["kernel_id"]
            )
        await self.services.kernels.refresh()
        self.services.sampler.refresh_processes()

    async def _on_contents_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """Policies follow notebooks that are renamed, and go with notebooks that are deleted."""
        action = data.get("action")
        try:
            if action == "rename" and data.get("source_path"):
                old = normalize_notebook_path(data["source_path"])
                new = normalize_notebook_path(data["path"])
                moved = await asyncio.to_thread(self.services.policies.store.rename, old, new)
                if moved:
                    self.log.info("jupyter-tfgpu: %d policy(ies) followed %s -> %s", moved, old, new)
            elif action == "delete":
                path = normalize_notebook_path(data["path"])
                await asyncio.to_thread(self.services.policies.store.delete_tree, path)
        except PolicyError:
            return  # e.g. the root folder itself
        except StoreUnavailable as err:
            self.log.warning(
                "jupyter-tfgpu: policies did not follow %s of %s: %s", action, data.get("path"), err
            )

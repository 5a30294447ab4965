"""The server extension: builds the services once per server, starts and stops them, and
registers the routes."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import PeriodicCallback
from traitlets import Any as AnyTrait
from traitlets import Instance

from jupyter_tfgpu._version import __version__
from jupyter_tfgpu.policy import PolicyError, StoreUnavailable, normalize_notebook_path
from jupyter_tfgpu.server import metrics
from jupyter_tfgpu.server.api.handlers import SERVICES_KEY
from jupyter_tfgpu.server.api.routes import route_patterns
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import check_devices
from jupyter_tfgpu.server.config_loading import caps_in_force, check_settings, stop_unless_warned
from jupyter_tfgpu.server.kernels.provisioner import TFGPUProvisioner
from jupyter_tfgpu.server.services import Services, build_services

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS_ACTIONS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class TFGPUApp(ExtensionApp):
    """Loads jupyter-tfgpu into a running jupyter_server."""

    name = "jupyter_tfgpu"
    load_other_extensions = True
    classes = [TFGPU]

    services = Instance(Services, allow_none=True)
    _unregister_metrics = AnyTrait(allow_none=True)
    _unsubscribe = AnyTrait(allow_none=True)
    _refresher = AnyTrait(allow_none=True)
    _unsubscribe_policies = AnyTrait(allow_none=True)

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
        sampler, kernels = services.sampler, services.kernels
        # A worker thread checks the store's folder and reads its file, waited for a few seconds
        # at most: a slow or stuck file system must not keep the server from listening (the
        # caps hold without the store). Problems go to the log and to GET policies; reads
        # answer from memory, and the thread goes on looking for other processes' writes.
        services.policies.store.start_refreshing()
        self._unsubscribe = sampler.subscribe(self._on_snapshot)
        self._unregister_metrics = metrics.register(
            metrics.SnapshotCollector(
                snapshot=lambda: sampler.latest.gpus,
                kernel_rows=kernels.metrics_rows,
                sampler_stats=sampler.describe,
                identity=metrics.ServerIdentity.from_environment(),
                usage=services.usage.totals,
                placements=services.kernels.launches.placements,
                version=__version__,
                log=self.log,
            )
        )
        loop = self._event_loop()
        sampler.start(loop=loop)
        self._unsubscribe_policies = services.policies.changes.subscribe(
            lambda: self._call_on_loop(loop, services.stream.policies_changed)
        )
        check_devices(cfg, sampler, services.problems, self.log)
        self.log.info("%s", caps_in_force(services.settings, services.provisioner, caps_file))
        if caps_file is not None:
            # Read in the watcher's thread; put in force (or refused) on the loop, in one step.
            caps_file.start_watching(
                lambda read: self._call_on_loop(
                    loop, lambda: caps_file.receive(read, services.apply_caps)
                )
            )
        # The app itself is under settings["jupyter_tfgpu"] (jupyter_server puts it there);
        # handlers see only the services.
        self.settings[SERVICES_KEY] = services
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is not None:
            event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
            event_logger.add_listener(schema_id=CONTENTS_ACTIONS, listener=self._on_contents_action)
        # The sampler logs "jupyter-tfgpu: backend X, N GPU(s)" once its worker has opened
        # the backend: nothing is known about the GPUs here.

    def initialize_handlers(self) -> None:
        """Register the REST and websocket routes."""
        self.handlers.extend(route_patterns())

    async def start_extension(self) -> None:
        """Keep kernel attribution fresh, and forget kernels that are gone, while the server runs."""
        interval_ms = max(1000, int(self.services.settings["process_interval"] * 1000))
        self._refresher = PeriodicCallback(self.services.kernels.refresh_and_prune, interval_ms)
        self._refresher.start()

    async def stop_extension(self) -> None:
        """Stop sampling and shut NVML down with the server."""
        if self._refresher is not None:
            self._refresher.stop()
        services = self.services
        if services is not None:
            services.policies.store.stop_refreshing()
            if services.caps_file is not None:
                services.caps_file.stop_watching()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._unsubscribe_policies is not None:
            self._unsubscribe_policies()
        if self._unregister_metrics is not None:
            self._unregister_metrics()
            self._unregister_metrics = None
        if services is None:
            return
        if TFGPUProvisioner.launches is services.kernels.launches:
            TFGPUProvisioner.launches = None
        await services.kernels.stop()
        await asyncio.get_running_loop().run_in_executor(None, services.sampler.stop)

    @staticmethod
    def _call_on_loop(loop: asyncio.AbstractEventLoop | None, callback: Any) -> None:
        """Run ``callback`` on the server's loop, from whichever thread made the change."""
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop is closing with the server

    def _on_snapshot(self, snapshot: Any) -> None:
        services = self.services
        try:
            services.usage.add(snapshot.timestamp, snapshot.gpus, services.kernels.metrics_rows())
        except Exception:  # noqa: BLE001 - usage totals must not stop enforcement
            self.log.exception("jupyter-tfgpu: counting GPU usage failed")
        if services.enforcer.enabled:
            asyncio.ensure_future(services.enforcer.enforce())

    # -- events ------------------------------------------------------------------------------

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

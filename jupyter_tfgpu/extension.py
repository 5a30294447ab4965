"""The server extension: builds the services once per server and registers the routes."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Instance

from .config import TFGPU
from .gpu import make_backend
from .handlers import route_patterns
from .sampler import Sampler

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"


class TFGPUApp(ExtensionApp):
    """Loads jupyter-tfgpu into a running jupyter_server."""

    name = "jupyter_tfgpu"
    load_other_extensions = True
    classes = [TFGPU]

    config_traits = Instance(TFGPU, allow_none=True)
    sampler = Instance(Sampler, allow_none=True)

    def initialize_settings(self) -> None:
        """Build the config, backend and sampler, and start sampling."""
        # Settings live in the server's config so `--TFGPU.x=...` and
        # `c.TFGPU.x = ...` in jupyter_server_config.py both reach them.
        self.config_traits = TFGPU(parent=self.serverapp)
        cfg = self.config_traits
        backend = make_backend(cfg.backend, cfg.simulated_gpus, pid_source=self._kernel_pids)
        self.sampler = Sampler(
            backend,
            interval=cfg.sample_interval,
            history_seconds=cfg.history_seconds,
            budget=cfg.nvml_budget,
            slow_interval=cfg.slow_interval,
            process_interval=cfg.process_interval,
            pcie_interval=cfg.pcie_interval,
            log=self.log,
        )
        self.sampler.start(loop=self._event_loop())
        self.settings["tfgpu"] = self
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is not None:
            event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        self.log.info(
            "jupyter-tfgpu: backend %s, %s",
            backend.name if backend else "none",
            f"{self.sampler.device_count} GPU(s)" if self.sampler.available else self.sampler.reason,
        )

    def initialize_handlers(self) -> None:
        """Register the REST and websocket routes."""
        self.handlers.extend(route_patterns())

    async def stop_extension(self) -> None:
        """Stop sampling and shut NVML down with the server."""
        if self.sampler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.sampler.stop)

    # -- kernels -----------------------------------------------------------------------------

    def _event_loop(self) -> asyncio.AbstractEventLoop | None:
        io_loop = getattr(self.serverapp, "io_loop", None)
        if io_loop is not None:
            return io_loop.asyncio_loop
        try:
            return asyncio.get_event_loop()
        except RuntimeError:
            return None

    def _kernel_pids(self) -> list[int]:
        """PIDs of the kernel processes this server started (called from the sampler thread)."""
        km = self.serverapp.kernel_manager
        pids = []
        for kernel_id in list(km.list_kernel_ids()):
            try:
                pid = km.get_kernel(kernel_id).provisioner.pid
            except (KeyError, AttributeError):
                continue
            if pid:
                pids.append(pid)
        return pids

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """A kernel started, restarted or stopped: read process lists again soon."""
        if data.get("action") in ("start", "restart", "shutdown") and self.sampler is not None:
            self.sampler.refresh_processes()

"""The server extension: builds the services once per server and registers the routes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import PeriodicCallback
from traitlets import Any as AnyTrait
from traitlets import Dict as DictTrait
from traitlets import Instance
from traitlets import List as ListTrait

from jupyter_tfgpu.server.api import metrics
from jupyter_tfgpu.server.kernels.attribution import Attribution
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import check_allowed_devices, check_settings
from jupyter_tfgpu.server.kernels.enforcement import Decision, Enforcer, Rules, act_on_kernel
from jupyter_tfgpu.gpu import make_backend
from jupyter_tfgpu.server.api.routes import route_patterns
from jupyter_tfgpu.server.kernels.channel import KernelReports, KernelTokens
from jupyter_tfgpu.server.kernels.registry import KernelRegistry
from jupyter_tfgpu.policy.placement import Placement
from jupyter_tfgpu.policy import (
    AdminPolicy,
    PolicyError,
    PolicyService,
    PolicyStore,
    StoreUnavailable,
    normalize_notebook_path,
)
from jupyter_tfgpu.server.kernels.provisioner import PROVISIONER_NAME, TFGPUProvisioner
from jupyter_tfgpu.server.sampling.sampler import Sampler

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
ENFORCEMENT_EVENT = "https://jupyter-tfgpu.readthedocs.io/events/enforcement/v1"
ENFORCEMENT_SCHEMA = Path(__file__).parent / "events" / "enforcement.yaml"
CONTENTS_ACTIONS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class TFGPUApp(ExtensionApp):
    """Loads jupyter-tfgpu into a running jupyter_server."""

    name = "jupyter_tfgpu"
    load_other_extensions = True
    classes = [TFGPU]

    config_traits = Instance(TFGPU, allow_none=True)
    sampler = Instance(Sampler, allow_none=True)
    policies = Instance(PolicyService, allow_none=True)
    kernels = Instance(KernelRegistry, allow_none=True)
    attribution = Instance(Attribution, allow_none=True)
    tokens = Instance(KernelTokens, allow_none=True)
    reports = Instance(KernelReports, allow_none=True)
    enforcer = Instance(Enforcer, allow_none=True)
    _unregister_metrics = AnyTrait(allow_none=True)
    _unsubscribe = AnyTrait(allow_none=True)
    provisioner_state = DictTrait()
    config_problems = ListTrait()  # admin settings that do not apply (GET config)
    _refresher = AnyTrait(allow_none=True)

    def initialize_settings(self) -> None:
        """Build config, sampler, policies and kernel registry; start sampling."""
        # Settings live in the server's config so `--TFGPU.x=...` and
        # `c.TFGPU.x = ...` in jupyter_server_config.py both reach them. A wrong one stops the
        # server here, before anything is built or served (TFGPU.on_config_error).
        cfg, self.config_problems = check_settings(self.serverapp, self.log)
        self.config_traits = cfg
        self.tokens = KernelTokens()
        self.reports = KernelReports()
        self.attribution = Attribution(reports=self.reports.current)
        backend = make_backend(
            cfg.backend, cfg.simulated_gpus, pid_source=self.attribution.kernel_pids
        )
        self.sampler = Sampler(
            backend,
            interval=cfg.sample_interval,
            history_seconds=cfg.history_seconds,
            budget=cfg.nvml_budget,
            slow_interval=cfg.slow_interval,
            process_interval=cfg.process_interval,
            pcie_interval=cfg.pcie_interval,
            # An admin who names a backend expects it to work: its absence is a warning.
            warn_unavailable=cfg.backend != "auto",
            log=self.log,
        )
        self.sampler.annotators.append(self.attribution.annotate)
        self.policies = PolicyService(
            PolicyStore(cfg.policy_store_path, log=self.log),
            AdminPolicy(
                default=cfg.default_policy,
                max_memory_mb=cfg.max_memory_mb,
                allowed_devices=tuple(cfg.allowed_devices) if cfg.allowed_devices is not None else None,
                force_memory_growth=cfg.force_memory_growth,
                allow_user_policies=cfg.allow_user_policies,
                forced=cfg.forced_policy,
                max_threads=cfg.max_threads,
                placement_strategy=cfg.placement_strategy,
            ),
            devices=lambda: self.sampler.devices,
            devices_known=lambda: self.sampler.available,
            monitoring_reason=lambda: self.sampler.reason,
            root_dir=self.serverapp.root_dir,
            log=self.log,
            placement=Placement(lambda: self.sampler.latest.data, cfg.placement_strategy),
        )
        # Read once before serving (a corrupt or unreadable store is reported in the start-up
        # log); from then on reads answer from memory and a thread looks for other writers.
        self.policies.store.refresh()
        self.policies.store.start_refreshing()
        report_root = os.path.join(jupyter_runtime_dir(), f"tfgpu-{os.getpid()}")
        self.kernels = KernelRegistry(
            self.serverapp.kernel_manager,
            self.serverapp.session_manager,
            self.policies,
            self.sampler,
            self.attribution,
            report_root,
            tokens=self.tokens,
            reports=self.reports,
            log=self.log,
        )
        self._install_provisioner(cfg, report_root)
        self._install_enforcer(cfg)
        self._unregister_metrics = metrics.register(
            metrics.SnapshotCollector(
                snapshot=lambda: self.sampler.latest.data,
                kernel_memory=self.kernels.memory_rows,
                sampler_stats=self.sampler.describe,
            )
        )
        self.sampler.start(loop=self._event_loop())
        check_allowed_devices(cfg.allowed_devices, self.sampler, self.config_problems, self.log)
        self.settings["tfgpu"] = self
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is not None:
            event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
            event_logger.add_listener(schema_id=CONTENTS_ACTIONS, listener=self._on_contents_action)
        self.log.info(
            "jupyter-tfgpu: backend %s, %s",
            backend.name if backend else "none",
            f"{self.sampler.device_count} GPU(s)" if self.sampler.available else self.sampler.reason,
        )

    def initialize_handlers(self) -> None:
        """Register the REST and websocket routes."""
        self.handlers.extend(route_patterns())

    async def start_extension(self) -> None:
        """Keep kernel attribution fresh, and forget kernels that are gone, while the server runs."""
        interval_ms = max(1000, int(self.config_traits.process_interval * 1000))
        self._refresher = PeriodicCallback(self.kernels.refresh_and_prune, interval_ms)
        self._refresher.start()

    async def stop_extension(self) -> None:
        """Stop sampling and shut NVML down with the server."""
        if self._refresher is not None:
            self._refresher.stop()
        if self.policies is not None:
            self.policies.store.stop_refreshing()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._unregister_metrics is not None:
            self._unregister_metrics()
            self._unregister_metrics = None
        if TFGPUProvisioner.policies is self.policies:
            TFGPUProvisioner.policies = None
        if self.sampler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.sampler.stop)

    def stream_message(self, snapshot: Any) -> str:
        """The websocket message for a snapshot: GPUs plus a kernel summary, made once."""
        text = getattr(snapshot, "stream_text", None)
        if text is None:
            kernels = self.kernels.summary() if self.kernels is not None else []
            text = snapshot.text[:-1] + ',"kernels":' + json.dumps(kernels) + "}"
            snapshot.stream_text = text
        return text

    # -- enforcement -------------------------------------------------------------------------

    def _install_enforcer(self, cfg: TFGPU) -> None:
        """Watch every snapshot for kernels over their cap or idle with GPU memory."""
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is not None and ENFORCEMENT_EVENT not in event_logger.schemas.schema_ids:
            event_logger.register_event_schema(ENFORCEMENT_SCHEMA)
        self.enforcer = Enforcer(
            Rules(
                action=cfg.enforcement,
                grace=cfg.enforcement_grace,
                idle_timeout=cfg.idle_timeout,
                idle_min_memory_mb=cfg.idle_min_memory_mb,
                idle_action=cfg.idle_action,
                max_actions_per_hour=cfg.max_actions_per_hour,
            ),
            facts=self.kernels.facts,
            act=lambda kernel_id, action: act_on_kernel(
                self.serverapp.kernel_manager, kernel_id, action
            ),
            emit=self._emit_decision,
            log=self.log,
        )
        if self.enforcer.enabled:
            self._unsubscribe = self.sampler.subscribe(self._on_snapshot)

    def _on_snapshot(self, snapshot: Any) -> None:
        asyncio.ensure_future(self.enforcer.enforce())

    def _emit_decision(self, decision: Decision) -> None:
        metrics.ENFORCEMENT_ACTIONS.labels(rule=decision.rule, action=decision.action).inc()
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is not None:
            event_logger.emit(schema_id=ENFORCEMENT_EVENT, data=decision.to_event())

    # -- provisioner -------------------------------------------------------------------------

    def _install_provisioner(self, cfg: TFGPU, report_root: str) -> None:
        """Make the tfgpu provisioner the default one, unless an admin chose another.

        Setting ``default_provisioner_name`` in a config file has no effect: jupyter_client
        builds this singleton without config when it lists kernelspecs. So the extension sets
        the trait on the instance.
        """
        TFGPUProvisioner.policies = self.policies
        TFGPUProvisioner.report_root = report_root
        TFGPUProvisioner.tokens = self.tokens
        TFGPUProvisioner.server_url = self._local_url()
        TFGPUProvisioner.keep_hub_token = cfg.keep_hub_token_in_kernels
        factory = KernelProvisionerFactory.instance()
        current = factory.default_provisioner_name
        state = {"name": PROVISIONER_NAME, "default": False, "reason": None}
        if not cfg.use_provisioner:
            state["reason"] = "TFGPU.use_provisioner is False"
        elif PROVISIONER_NAME not in factory.provisioners:
            state["reason"] = "the tfgpu-provisioner entry point is not installed"
        elif current not in ("local-provisioner", PROVISIONER_NAME):
            state["reason"] = f"the admin chose {current!r} as the default provisioner"
        else:
            factory.default_provisioner_name = PROVISIONER_NAME
            state["default"] = True
        if state["reason"]:
            self.log.warning("jupyter-tfgpu: policies are not applied to kernels: %s", state["reason"])
        self.provisioner_state = state

    def _local_url(self) -> str | None:
        """The server's URL as a process on this machine reaches it (None on a unix socket)."""
        app = self.serverapp
        if getattr(app, "sock", None):
            return None
        scheme = "https" if app.certfile else "http"
        host = app.ip if app.ip not in ("", "0.0.0.0", "::", "*") else "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{app.port}{app.base_url}"

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
            self.kernels.forget(data["kernel_id"])
            # Off the loop, and not awaited: the kernel could have filled its report folder.
            asyncio.get_running_loop().run_in_executor(
                None, self.kernels.remove_report_folder, data["kernel_id"]
            )
        await self.kernels.refresh()
        self.sampler.refresh_processes()

    async def _on_contents_action(self, logger: Any, schema_id: str, data: dict) -> None:
        """Policies follow notebooks that are renamed, and go with notebooks that are deleted."""
        action = data.get("action")
        try:
            if action == "rename" and data.get("source_path"):
                old = normalize_notebook_path(data["source_path"])
                new = normalize_notebook_path(data["path"])
                moved = await asyncio.to_thread(self.policies.store.rename, old, new)
                if moved:
                    self.log.info("jupyter-tfgpu: %d policy(ies) followed %s -> %s", moved, old, new)
            elif action == "delete":
                path = normalize_notebook_path(data["path"])
                await asyncio.to_thread(self.policies.store.delete_tree, path)
        except PolicyError:
            return  # e.g. the root folder itself
        except StoreUnavailable as err:
            self.log.warning(
                "jupyter-tfgpu: policies did not follow %s of %s: %s", action, data.get("path"), err
            )

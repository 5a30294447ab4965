"""The extension's services, built once per server from the admin's ``TFGPU`` settings.

``build_services`` makes them and wires them to each other; ``Services.start`` starts what runs
while the server serves, each with its undo, and ``Services.stop`` undoes all of it in one step.
The extension app calls both and hands the services to the handlers, which reach each one
through a short property.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_core.paths import jupyter_runtime_dir
from tornado.ioloop import PeriodicCallback

from jupyter_tfgpu._version import __version__
from jupyter_tfgpu.gpu import make_backend
from jupyter_tfgpu.policy import AdminPolicy, PolicyService, PolicyStore
from jupyter_tfgpu.policy.environment import STARTING_CONTEXT_MB
from jupyter_tfgpu.policy.placement import Placement
from jupyter_tfgpu.server import metrics
from jupyter_tfgpu.server.stream import StreamMessages
from jupyter_tfgpu.server.kernels.usage import KernelUsage
from jupyter_tfgpu.server.caps_watcher import CapsFile
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import Problem
from jupyter_tfgpu.server.events import ENFORCEMENT_EVENT, ENFORCEMENT_SCHEMA
from jupyter_tfgpu.server.hardcaps.service import HardCaps
from jupyter_tfgpu.server.kernels.attribution import Attribution
from jupyter_tfgpu.server.kernels.channel import KernelReports, KernelTokens
from jupyter_tfgpu.server.kernels.contexts import ContextSizes
from jupyter_tfgpu.server.kernels.enforcement import Decision, Enforcer, Rules, act_on_kernel
from jupyter_tfgpu.server.kernels.provisioner import (
    PROVISIONER_NAME,
    ProvisionerContext,
    TFGPUProvisioner,
)
from jupyter_tfgpu.server.kernels.registry import KernelRegistry
from jupyter_tfgpu.server.sampling.groups import PROCESSES, SAMPLING_GROUPS
from jupyter_tfgpu.server.sampling.sampler import Sampler


# The sampling settings: TFGPU trait -> (the Sampler argument it sets, whether GET config shows
# it); each sampling group's interval as its row says (sampling/groups.py). The caps and the
# enforcement rules list their own settings (AdminPolicy, Rules).
SAMPLING: dict[str, tuple[str, bool]] = {
    **{group.setting: (group.argument, group.in_config) for group in SAMPLING_GROUPS},
    "history_seconds": ("history_seconds", True),
    "nvml_budget": ("budget", True),
}


@dataclass
class Services:
    """Everything the handlers and the app use, made once per server."""

    settings: dict[str, Any]  # every TFGPU setting's value, by trait name
    sampler: Sampler
    policies: PolicyService
    kernels: KernelRegistry
    attribution: Attribution
    tokens: KernelTokens
    reports: KernelReports
    enforcer: Enforcer
    stream: StreamMessages
    provisioner: dict[str, Any]  # whether the tfgpu provisioner is the default, and why not
    # What the provisioner needs of this server, handed to it while the services run.
    provisioner_context: ProvisionerContext
    problems: list[Problem] = field(default_factory=list)  # settings that do not apply
    # Each kernel's GPU memory-seconds and busy seconds, counted per snapshot (for metrics).
    usage: KernelUsage = field(default_factory=KernelUsage)
    # The CUDA context each GPU model and driver needs, measured (framework limits leave it).
    contexts: ContextSizes | None = None
    caps_file: CapsFile | None = None  # TFGPU.caps_file, when the admin named one
    # TFGPU.hard_caps: the mode in force and its mechanism ("off" unless given)
    hard_caps: HardCaps = field(default_factory=lambda: HardCaps("off"))
    log: logging.Logger = field(default_factory=lambda: logging.getLogger(__name__))
    # What start() and keep_kernels_fresh() started, each as its undo, in the order started.
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    # -- running ---------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Start what runs while the server serves, on the server's event ``loop``: the hard
        caps' mode (its mechanism started, waited for: the server does not serve yet), the
        policy store's refresher, the provisioner's context, the snapshot subscribers (usage
        counts and the enforcer), the metrics collector, the sampler, the policy pushes to the
        stream and the caps file's watcher."""
        # Before the provisioner may start a kernel: each start is prepared by the mode in force.
        self.hard_caps.start()
        # A worker thread checks the store's folder and reads its file, waited for a few seconds
        # at most: a slow or stuck file system must not keep the server from listening (the
        # caps hold without the store). Problems go to the log and to GET policies; reads
        # answer from memory, and the thread goes on looking for other processes' writes.
        store = self.policies.store
        store.start_refreshing()
        self._undo.append(store.stop_refreshing)
        context = self.provisioner_context
        TFGPUProvisioner.serve(context)
        self._undo.append(lambda: TFGPUProvisioner.stop_serving(context))
        self._undo.append(self.sampler.subscribe(self._on_snapshot))
        self._undo.append(
            metrics.register(
                metrics.SnapshotCollector(
                    snapshot=lambda: self.sampler.latest.gpus,
                    kernel_rows=self.kernels.metrics_rows,
                    sampler_stats=self.sampler.describe,
                    identity=metrics.ServerIdentity.from_environment(),
                    usage=self.usage.totals,
                    placements=self.kernels.launches.placements,
                    version=__version__,
                    log=self.log,
                )
            )
        )
        self.sampler.start(loop=loop)
        self._undo.append(
            self.policies.changes.subscribe(
                lambda: call_on_loop(loop, self.stream.policies_changed)
            )
        )
        caps_file = self.caps_file
        if caps_file is not None:
            # Read in the watcher's thread; put in force (or refused) on the loop, in one step.
            caps_file.start_watching(
                lambda read: call_on_loop(loop, lambda: caps_file.receive(read, self.apply_caps))
            )
            self._undo.append(caps_file.stop_watching)

    def keep_kernels_fresh(self) -> None:
        """Refresh kernel attribution, and forget kernels that are gone, as often as process
        lists are read (at least a second apart), on the running event loop."""
        interval_ms = max(1000, int(self.settings[PROCESSES.setting] * 1000))
        refresher = PeriodicCallback(self.kernels.refresh_and_prune, interval_ms)
        refresher.start()
        self._undo.append(refresher.stop)

    async def stop(self) -> None:
        """Undo what start() and keep_kernels_fresh() started, the latest first; then stop the
        kernel registry (its record folder removed), the sampler (NVML shut down) and the hard
        caps' mechanism. With a driver mechanism in force, the kernels are shut down first (the
        server would right after), so each one's hard cap is released while it can be."""
        if self.hard_caps.driver_mode:
            await self._shut_down_kernels()
        while self._undo:
            self._undo.pop()()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.hard_caps.stop)
        await self.kernels.stop()
        await loop.run_in_executor(None, self.sampler.stop)

    async def _shut_down_kernels(self) -> None:
        # One by one, each awaited to its end: shutdown_all() gives up at the first kernel that
        # fails (one whose start failed is "not found"), leaving the others still running as
        # the mechanism stops under them.
        manager = self.kernels.kernel_manager
        kernel_ids = list(manager.list_kernel_ids())
        if not kernel_ids:
            return

        async def shut_down(kernel_id: str) -> None:
            result = manager.shutdown_kernel(kernel_id)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result

        results = await asyncio.gather(*map(shut_down, kernel_ids), return_exceptions=True)
        for kernel_id, result in zip(kernel_ids, results):
            if isinstance(result, Exception):  # the server's own shutdown tries again
                self.log.warning(
                    "jupyter-tfgpu: shutting kernel %s down before the hard caps failed: %s",
                    kernel_id,
                    result,
                )

    def _on_snapshot(self, snapshot: Any) -> None:
        try:
            self.usage.add(snapshot.timestamp, snapshot.gpus, self.kernels.metrics_rows())
        except Exception:  # noqa: BLE001 - usage totals must not stop enforcement
            self.log.exception("jupyter-tfgpu: counting GPU usage failed")
        if self.enforcer.enabled:
            asyncio.ensure_future(self.enforcer.enforce())

    # -- views -----------------------------------------------------------------------------------

    def context_reserve_json(self) -> dict[str, Any]:
        """What the frameworks leave of a cap for the CUDA context, as ``GET status`` shows it:
        the starting value, and what was measured per GPU model and driver."""
        contexts = self.contexts
        simulated = self.sampler.simulated
        return {
            "starting_mb": 0 if simulated else STARTING_CONTEXT_MB,
            "measured": contexts.to_json() if contexts is not None else [],
        }

    @property
    def configured_backend(self) -> str:
        """The backend the admin asked for (``auto`` unless set)."""
        return self.settings["backend"]

    def settings_json(self) -> dict[str, Any]:
        """The admin settings in force, as ``GET config`` shows them."""
        return {
            **self.policies.admin.to_json(),
            "backend": self.configured_backend,
            **{name: self.settings[name] for name, (_, shown) in SAMPLING.items() if shown},
            "policy_store_path": self.settings["policy_store_path"],
            "provisioner": self.provisioner,
            "enforcement": self.enforcer.rules.to_json(),
            "caps_file": self.caps_file.to_json() if self.caps_file is not None else None,
            "hard_caps": self.settings["hard_caps"],
            # Admin settings that do not apply (with TFGPU.on_config_error = 'warn'), and why
            # the caps file as it is now is not used.
            "problems": [problem.to_json() for problem in self.problems + self._caps_file_problems],
        }

    @property
    def _caps_file_problems(self) -> list[Problem]:
        return self.caps_file.problems if self.caps_file is not None else []

    def apply_caps(self, values: dict[str, Any]) -> None:
        """Put new caps and enforcement rules in force, all at once (on the event loop): the
        admin policy, the placement strategy, the enforcer's rules, and GET config."""
        settings = {**self.settings, **values}
        admin = AdminPolicy.from_settings(settings)
        rules = Rules.from_settings(settings)
        # Nothing is changed until everything above was made.
        self.settings.update(values)
        if admin != self.policies.admin:
            self.policies.set_admin(admin)
        if rules != self.enforcer.rules:
            self.enforcer.set_rules(rules)


def build_services(
    config: TFGPU,
    serverapp: Any,
    log: logging.Logger,
    problems: list[Problem] | None = None,
    caps_file: CapsFile | None = None,
) -> Services:
    """Build every service from the checked settings; nothing is started yet."""
    settings = {name: getattr(config, name) for name in config.trait_names(config=True)}
    record_root = os.path.join(jupyter_runtime_dir(), f"tfgpu-{os.getpid()}")
    tokens = KernelTokens()
    reports = KernelReports()
    attribution = Attribution(reports=reports.current)
    backend = make_backend(
        settings["backend"], settings["simulated_gpus"], pid_source=attribution.kernel_pids
    )
    sampler = Sampler(
        backend,
        **{argument: settings[name] for name, (argument, _) in SAMPLING.items()},
        # An admin who names a backend expects it to work: its absence is a warning.
        warn_unavailable=settings["backend"] != "auto",
        log=log,
    )
    sampler.annotators.append(attribution.annotate)
    # After attribution: it measures with the kernels' processes found.
    contexts = ContextSizes(
        reports.current,
        devices=lambda: sampler.devices,
        driver=lambda: sampler.versions.get("driver"),
        simulated=lambda: sampler.simulated,
    )
    sampler.annotators.append(contexts.observe)
    policies = PolicyService(
        PolicyStore(settings["policy_store_path"], log=log),
        AdminPolicy.from_settings(settings),
        devices=lambda: sampler.devices,
        devices_known=lambda: sampler.available,
        monitoring_reason=lambda: sampler.reason,
        root_dir=serverapp.root_dir,
        log=log,
        placement=Placement(lambda: sampler.latest.gpus, settings["placement_strategy"]),
        context_reserve=contexts.reserve,
    )
    hard_caps = HardCaps(settings["hard_caps"], admin=lambda: policies.admin, log=log)
    kernels = KernelRegistry(
        serverapp.kernel_manager,
        serverapp.session_manager,
        policies,
        sampler,
        attribution,
        record_root,
        tokens=tokens,
        reports=reports,
        log=log,
        hard_caps=hard_caps,
    )
    return Services(
        settings=settings,
        sampler=sampler,
        policies=policies,
        kernels=kernels,
        attribution=attribution,
        tokens=tokens,
        reports=reports,
        enforcer=make_enforcer(settings, kernels, serverapp, log),
        stream=StreamMessages(kernels.summary, policies.changes),
        provisioner=install_provisioner(settings, log),
        provisioner_context=ProvisionerContext(
            kernels.launches,
            tokens=tokens,
            record_root=record_root,
            server_url=local_url(serverapp),
            keep_hub_token=settings["keep_hub_token_in_kernels"],
        ),
        problems=problems if problems is not None else [],
        contexts=contexts,
        caps_file=caps_file,
        hard_caps=hard_caps,
        log=log,
    )


def make_enforcer(
    settings: dict[str, Any], kernels: KernelRegistry, serverapp: Any, log: logging.Logger
) -> Enforcer:
    """The enforcer of caps and idle reaping; it emits each decision as an event."""
    event_logger = getattr(serverapp, "event_logger", None)
    if event_logger is not None and ENFORCEMENT_EVENT not in event_logger.schemas.schema_ids:
        event_logger.register_event_schema(ENFORCEMENT_SCHEMA)

    def emit(decision: Decision) -> None:
        metrics.ENFORCEMENT_ACTIONS.labels(rule=decision.rule, action=decision.action).inc()
        if event_logger is not None:
            event_logger.emit(schema_id=ENFORCEMENT_EVENT, data=decision.to_event())

    return Enforcer(
        Rules.from_settings(settings),
        facts=kernels.facts,
        act=lambda kernel_id, action: act_on_kernel(serverapp.kernel_manager, kernel_id, action),
        emit=emit,
        log=log,
    )


def install_provisioner(settings: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    """Make the tfgpu provisioner the default one, unless an admin chose another; say which.

    Setting ``default_provisioner_name`` in a config file has no effect: jupyter_client
    builds this singleton without config when it lists kernelspecs. So the extension sets
    the trait on the instance.
    """
    factory = KernelProvisionerFactory.instance()
    current = factory.default_provisioner_name
    state = {"name": PROVISIONER_NAME, "default": False, "reason": None}
    if not settings["use_provisioner"]:
        state["reason"] = "TFGPU.use_provisioner is False"
    elif PROVISIONER_NAME not in factory.provisioners:
        state["reason"] = "the tfgpu-provisioner entry point is not installed"
    elif current not in ("local-provisioner", PROVISIONER_NAME):
        state["reason"] = f"the admin chose {current!r} as the default provisioner"
    else:
        factory.default_provisioner_name = PROVISIONER_NAME
        state["default"] = True
    if state["reason"]:
        log.warning("jupyter-tfgpu: policies are not applied to kernels: %s", state["reason"])
    return state


def local_url(app: Any) -> str | None:
    """The server's URL as a process on this machine reaches it (None on a unix socket)."""
    if getattr(app, "sock", None):
        return None
    scheme = "https" if app.certfile else "http"
    host = app.ip if app.ip not in ("", "0.0.0.0", "::", "*") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{app.port}{app.base_url}"


def call_on_loop(loop: asyncio.AbstractEventLoop | None, callback: Callable[[], Any]) -> None:
    """Run ``callback`` on the server's loop, from whichever thread made the change."""
    if loop is None or loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass  # the loop is closing with the server

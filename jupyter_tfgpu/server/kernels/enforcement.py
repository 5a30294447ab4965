"""Admin enforcement: kernels over their GPU memory cap, and idle kernels holding GPU memory.

The enforcer looks at each snapshot. A kernel over its cap for longer than the grace period
gets the configured action; an idle kernel holding at least ``idle_min_memory_mb`` for longer
than ``idle_timeout`` gets the idle action. It only ever acts on kernels of this server
(through the kernel manager), never on other processes; ``warn`` is a dry run. Restart storms
are damped: past ``max_actions_per_hour`` actions on one kernel it only warns.

A kernel's GPU memory may be unknown on a snapshot (a GPU's process list could not be read, or
the kernel's own report, its only figure, stopped arriving). Unknown is neither "over" nor
"under": on such a snapshot no episode starts and none ends (its start time is kept), and
nothing is done, so a read that fails now and then delays an action only until the next known
figure, never for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

from jupyter_tfgpu.gpu import MiB

ACTIONS = ("warn", "interrupt", "restart", "shutdown")
PAST = {"interrupt": "interrupted", "restart": "restarted", "shutdown": "shut down"}


@dataclass(frozen=True)
class Rules:
    """The admin's enforcement settings: each field is the setting its metadata names."""

    action: str = field(default="off", metadata={"setting": "enforcement"})  # off / warn / ...
    grace: float = field(default=30.0, metadata={"setting": "enforcement_grace"})
    idle_timeout: float = 0.0  # 0 = no idle reaping
    idle_min_memory_mb: int = 256
    idle_action: str = "restart"
    max_actions_per_hour: int = 3

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> Rules:
        """The rules from setting values (``TFGPU`` traits, or any mapping of them)."""
        return cls(**{f.name: values[f.metadata.get("setting", f.name)] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``GET config``."""
        return asdict(self)


@dataclass
class KernelFacts:
    """What the enforcer needs to know about one kernel at one moment."""

    kernel_id: str
    notebook: str | None
    peak_gpu_bytes: int  # on the GPU judged: the one furthest over its limit (or nearest)
    total_gpu_bytes: int
    # What peak_gpu_bytes is held to, per GPU: the cap for NVML's figure, the framework limit
    # (the cap less the CUDA context reserve) for a figure that is only the kernel's report
    limit_bytes: int | None
    idle_seconds: float | None  # None while busy
    # Where the figures come from: "nvml" (its processes, as nvidia-smi shows them),
    # "kernel_report" (its frameworks' own report, sent from inside the kernel), "mixed"; None
    # when it holds nothing anywhere.
    peak_source: str | None = None  # of peak_gpu_bytes
    memory_source: str | None = None  # of total_gpu_bytes
    unknown: str | None = None  # why its GPU memory is unknown now (None: it is known)
    cap_bytes: int | None = None  # the cap itself, when limit_bytes is the framework limit
    # How its cap is enforced now: "driver", "framework" or "none" (policy.cap_enforcement)
    enforcement: str | None = None


@dataclass
class Decision:
    """One action to take (or to announce, for warn)."""

    kernel_id: str
    notebook: str | None
    rule: str
    action: str
    configured_action: str
    reason: str
    memory_bytes: int | None
    limit_bytes: int | None
    seconds: float | None
    dry_run: bool = False
    status: str = "done"
    enforcement: str | None = None  # how the kernel's cap was enforced as this was decided
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_event(self) -> dict[str, Any]:
        """The event payload (see events/enforcement.yaml)."""
        data = asdict(self)
        data.pop("time")
        return data


class Enforcer:
    """Turns snapshots into decisions, and decisions into kernel actions and events."""

    def __init__(
        self,
        rules: Rules,
        facts: Callable[[], list[KernelFacts]],
        act: Callable[[str, str], Awaitable[None]],
        emit: Callable[[Decision], None],
        log: logging.Logger | None = None,
    ) -> None:
        self.rules = rules
        self._facts = facts
        self._act = act
        self._emit = emit
        self.log = log or logging.getLogger(__name__)
        self.recent: deque[Decision] = deque(maxlen=200)
        self._since: dict[tuple[str, str], float] = {}  # (kernel, rule) -> condition began
        self._announced: set[tuple[str, str]] = set()  # warned for the current episode
        self._history: dict[str, deque[float]] = {}  # kernel -> times of real actions
        self._cooldown: dict[str, float] = {}  # kernel -> no decision before this time
        self._failing: set[str] = set()  # kernels whose facts could not be judged, logged once
        self._waiting: set[tuple[str, str]] = set()  # episodes held on an unknown figure, logged
        self._busy = False

    def set_rules(self, rules: Rules) -> None:
        """New rules (the admin's caps file changed): every episode starts over, so each kernel
        gets the whole grace period under the new rules; actions taken still count."""
        self.rules = rules
        self._since.clear()
        self._announced.clear()
        self._waiting.clear()

    @property
    def enabled(self) -> bool:
        """Whether any rule is on."""
        return self.rules.action != "off" or self.rules.idle_timeout > 0

    # -- deciding ----------------------------------------------------------------------------

    def decide(self, now: float | None = None) -> list[Decision]:
        """What to do now, given the kernels' current facts (no side effects on kernels)."""
        now = time.monotonic() if now is None else now
        decisions: list[Decision] = []
        rows = self._facts()
        for facts in rows:
            if now < self._cooldown.get(facts.kernel_id, 0):
                continue
            try:
                decisions.extend(self._decide_for(facts, now))
            except Exception:  # noqa: BLE001 - one kernel's bad figure must not stop the others
                if facts.kernel_id not in self._failing:
                    self._failing.add(facts.kernel_id)
                    self.log.exception("jupyter-tfgpu: could not judge kernel %s", facts.kernel_id)
        self._prune({facts.kernel_id for facts in rows})
        return decisions

    def _decide_for(self, facts: KernelFacts, now: float) -> list[Decision]:
        decisions = []
        for rule, holds, configured, wait in self._rules_for(facts):
            key = (facts.kernel_id, rule)
            if holds is None:
                self._wait_for_a_known_figure(facts, rule, key)
                continue
            self._waiting.discard(key)
            if not holds:
                self._since.pop(key, None)
                self._announced.discard(key)
                continue
            began = self._since.setdefault(key, now)
            if now - began < wait:
                continue
            decision = self._decision(facts, rule, configured, now - began, now)
            if decision.dry_run and key in self._announced:
                continue  # one warning per episode (marked once it was sent)
            decisions.append(decision)
        return decisions

    def _wait_for_a_known_figure(self, facts: KernelFacts, rule: str, key: tuple[str, str]) -> None:
        """Unknown memory: the episode (if any) neither starts nor ends; say so once."""
        if key in self._waiting:
            return
        self._waiting.add(key)
        episode = "its episode is kept" if key in self._since else "no episode starts"
        self.log.info(
            "jupyter-tfgpu: kernel %s (%s): the %s rule is not judged while its GPU memory is "
            "unknown (%s); %s until a known figure",
            facts.kernel_id,
            facts.notebook or "no notebook",
            rule,
            facts.unknown,
            episode,
        )

    def _prune(self, live: set[str]) -> None:
        """Forget the kernels that are gone: their conditions, history and cool-downs."""
        self._since = {k: v for k, v in self._since.items() if k[0] in live}
        self._announced = {k for k in self._announced if k[0] in live}
        self._waiting = {k for k in self._waiting if k[0] in live}
        for table in (self._history, self._cooldown):
            for kernel_id in [k for k in table if k not in live]:
                del table[kernel_id]
        self._failing &= live

    def _rules_for(self, facts: KernelFacts) -> list[tuple[str, bool | None, str, float]]:
        """(rule, whether it holds, action, grace) per rule in force; holds is None when the
        kernel's memory is unknown and the rule depends on it."""
        rules = self.rules
        unknown = facts.unknown is not None
        checks: list[tuple[str, bool | None, str, float]] = []
        if rules.action != "off" and facts.limit_bytes is not None:
            over = None if unknown else facts.peak_gpu_bytes > facts.limit_bytes
            checks.append(("memory_cap", over, rules.action, rules.grace))
        if rules.idle_timeout > 0:
            idle: bool | None = (
                facts.idle_seconds is not None and facts.idle_seconds >= rules.idle_timeout
            )
            if idle:  # and holding memory: known only when its memory is
                idle = None if unknown else facts.total_gpu_bytes >= rules.idle_min_memory_mb * MiB
            checks.append(("idle", idle, rules.idle_action, 0.0))
        return checks

    def _decision(
        self, facts: KernelFacts, rule: str, configured: str, held: float, now: float
    ) -> Decision:
        action, damped = configured, False
        history = self._history.setdefault(facts.kernel_id, deque())
        while history and now - history[0] > 3600:
            history.popleft()
        if configured != "warn" and len(history) >= self.rules.max_actions_per_hour:
            action, damped = "warn", True
        if rule == "memory_cap":
            reason = (
                f"{_who(facts)} held {facts.peak_gpu_bytes / MiB:.0f} MiB on a GPU"
                f"{_by_its_report(facts.peak_source)}, over {_its_limit(facts)}, for {held:.0f} s"
            )
            memory = facts.peak_gpu_bytes
        else:
            reason = (
                f"{_who(facts)} was idle for {facts.idle_seconds or 0:.0f} s while holding "
                f"{facts.total_gpu_bytes / MiB:.0f} MiB of GPU memory"
                f"{_by_its_report(facts.memory_source)}"
            )
            memory = facts.total_gpu_bytes
        if damped:
            reason += (
                f"; not acted on: {len(history)} actions on this kernel in the last hour "
                f"(TFGPU.max_actions_per_hour)."
            )
        elif action == "warn":
            reason += "; warning only (dry run)."
        else:
            reason += f"; the kernel was {PAST[action]}."
        return Decision(
            kernel_id=facts.kernel_id,
            notebook=facts.notebook,
            rule=rule,
            action=action,
            configured_action=configured,
            reason=reason,
            memory_bytes=memory,
            limit_bytes=facts.limit_bytes,
            seconds=round(held if rule == "memory_cap" else facts.idle_seconds or 0, 1),
            dry_run=action == "warn",
            enforcement=facts.enforcement,
        )

    # -- acting ------------------------------------------------------------------------------

    async def enforce(self, now: float | None = None) -> list[Decision]:
        """Decide, act on each decision, and announce it."""
        if not self.enabled or self._busy:
            return []
        self._busy = True
        try:
            try:
                decisions = self.decide(now)
            except Exception:  # noqa: BLE001 - e.g. the kernel list; the next snapshot retries
                self.log.exception("jupyter-tfgpu: enforcement pass failed")
                return []
            for decision in decisions:
                try:
                    await self._carry_out(decision)
                except Exception:  # noqa: BLE001 - one kernel's action must not stop the others
                    self.log.exception("jupyter-tfgpu: could not carry out %s", decision)
            return decisions
        finally:
            self._busy = False

    async def _carry_out(self, decision: Decision) -> None:
        key = (decision.kernel_id, decision.rule)
        if decision.action != "warn":
            # Whatever comes of it, give the kernel time (to free its memory, or to recover)
            # before judging it again, and start its episode over.
            now = time.monotonic()
            self._cooldown[decision.kernel_id] = now + max(self.rules.grace, 10.0)
            self._since = {k: v for k, v in self._since.items() if k[0] != decision.kernel_id}
            self._announced = {k for k in self._announced if k[0] != decision.kernel_id}
            try:
                await self._act(decision.kernel_id, decision.action)
            except Exception as err:  # noqa: BLE001 - report, never crash the server
                decision.status = "failed"
                decision.reason = decision.reason.rsplit(";", 1)[0] + f"; the {decision.action} failed: {err}."
            else:
                # Only actions that were taken count towards max_actions_per_hour.
                self._history.setdefault(decision.kernel_id, deque()).append(now)
        self.recent.append(decision)
        log = self.log.warning if decision.action != "warn" else self.log.info
        log(
            "jupyter-tfgpu: %s kernel %s (%s): %s",
            decision.action,
            decision.kernel_id,
            decision.notebook or "no notebook",
            decision.reason,
        )
        try:
            self._emit(decision)
        except Exception:  # noqa: BLE001
            self.log.exception("could not emit the enforcement event")
            return  # a warning that was not sent is not marked sent: the next pass retries
        if decision.dry_run:
            self._announced.add(key)


def _who(facts: KernelFacts) -> str:
    return f"The kernel of {facts.notebook}" if facts.notebook else f"Kernel {facts.kernel_id}"


def _its_limit(facts: KernelFacts) -> str:
    """The limit a figure was held to, in words."""
    limit, cap = (facts.limit_bytes or 0) / MiB, facts.cap_bytes
    if cap is None or cap == facts.limit_bytes:
        return f"its cap of {limit:.0f} MiB"
    return (
        f"its framework limit of {limit:.0f} MiB (its cap of {cap / MiB:.0f} MiB less "
        f"{cap / MiB - limit:.0f} MiB for the CUDA context, which its report leaves out)"
    )


def _by_its_report(source: str | None) -> str:
    """Said after a figure that came (wholly or partly) from the kernel's own report."""
    if source == "kernel_report":
        return " by its own report (its frameworks' figure, sent from inside the kernel)"
    if source == "mixed":
        return " (partly by its own report, sent from inside the kernel)"
    return ""


async def act_on_kernel(kernel_manager: Any, kernel_id: str, action: str) -> None:
    """Interrupt, restart or shut down a kernel through jupyter_server's kernel manager."""
    if kernel_id not in kernel_manager:
        raise KeyError(f"no kernel {kernel_id}")
    if action == "interrupt":
        await _maybe_await(kernel_manager.interrupt_kernel(kernel_id))
    elif action == "restart":
        await _maybe_await(kernel_manager.restart_kernel(kernel_id))
    elif action == "shutdown":
        await _maybe_await(kernel_manager.shutdown_kernel(kernel_id))
    else:
        raise ValueError(f"unknown action {action!r}")


async def _maybe_await(result: Any) -> None:
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result

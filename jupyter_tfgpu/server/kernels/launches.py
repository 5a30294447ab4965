"""What each of this server's kernels started with (its ``Launch``), from its start until the
registry forgets it, and how many "devices: auto" launches were placed so (for metrics).

The provisioner starts a kernel through ``start``: the policy service renders the launch, the
server's hard caps (``server/hardcaps/``) prepare it and say how its cap is enforced, the ledger
keeps it; it tells the hard caps before the kernel's processes are signalled
(``before_signal``) and once they are gone (``release``). A kernel that applies its notebook's
policy in-process gets the server's own rendering of it as its launch. Launches are read on the
event loop and in the metrics', sampler's and hard caps' threads: a lock guards the table.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from jupyter_tfgpu.policy import PolicyService
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement
from jupyter_tfgpu.policy.environment import encode
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.protocol import POLICY_ENV
from jupyter_tfgpu.server.hardcaps.framework import framework_enforcement
from jupyter_tfgpu.server.hardcaps.mechanism import Prepared, StartingKernel
from jupyter_tfgpu.server.hardcaps.service import HardCaps

# How long a kernel's stop waits for its hard cap to be released before it goes on.
RELEASE_SECONDS = 30.0


@dataclass(frozen=True)
class KernelStart:
    """What a kernel's process starts with: its environment's policy variables (None removes
    one) and what goes before its command (empty: nothing)."""

    env: dict[str, str | None]
    wrapper: tuple[str, ...] = ()


class KernelLaunches:
    """Each kernel's launch, by kernel id; owned by the kernel registry."""

    def __init__(
        self,
        policies: PolicyService,
        clock: Callable[[], float] = time.time,
        hard_caps: HardCaps | None = None,
    ) -> None:
        self.policies = policies
        self.clock = clock  # when a policy is applied in-process
        # TFGPU.hard_caps' mode and mechanism; "off" (framework settings only) unless given
        self.hard_caps = hard_caps or HardCaps("off", admin=lambda: policies.admin)
        self.hard_caps.on_report = self.report
        self._lock = threading.Lock()
        self._launches: dict[str, Launch] = {}
        # (strategy, outcome) -> how many "devices: auto" launches were decided so
        self._placements: collections.Counter[tuple[str, str]] = collections.Counter()

    async def start(
        self,
        kernel_id: str | None,
        session_name: str | None,
        inherited: Mapping[str, str] | None = None,
        language: str | None = None,
    ) -> KernelStart:
        """What a kernel about to start gets (its kernelspec's ``language``: whether in-process
        settings reach it); its launch, with how its cap is enforced, is kept under its id."""
        env, launch = self.policies.launch(
            kernel_id, session_name, inherited, placed=self._count_placement
        )
        starting = StartingKernel(kernel_id or "", launch, language, tuple(self.policies.devices))
        if kernel_id:
            prepared = await self.hard_caps.prepare(starting)
        else:  # nothing to release it by: framework settings only
            prepared = Prepared(framework_enforcement(starting))
        launch = replace(launch, enforcement=prepared.enforcement)
        env = {**env, **prepared.env, POLICY_ENV: encode(launch.to_json())}
        if kernel_id:
            with self._lock:
                self._launches[kernel_id] = launch
        return KernelStart(env, tuple(prepared.wrapper))

    async def before_signal(self, kernel_id: str, pid: int | None) -> None:
        """The kernel's processes are about to get SIGTERM or SIGKILL: its hard cap first."""
        await self.hard_caps.before_signal(kernel_id, pid)

    async def release(self, kernel_id: str) -> None:
        """The kernel's process is gone (it stopped, restarts, or failed to start): what its
        hard cap set is undone before this returns (``RELEASE_SECONDS`` at most)."""
        future = self.hard_caps.release(kernel_id)
        if future is None:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), RELEASE_SECONDS)
        except asyncio.TimeoutError:
            self.hard_caps.log.error(
                "jupyter-tfgpu: kernel %s: its hard cap was not released within %g s",
                kernel_id, RELEASE_SECONDS,
            )  # fmt: skip

    def report(self, kernel_id: str, enforcement: CapEnforcement) -> None:
        """The hard caps say a running kernel's cap is held otherwise now: its launch says so."""
        with self._lock:
            launch = self._launches.get(kernel_id)
            if launch is not None:
                self._launches[kernel_id] = replace(launch, enforcement=enforcement)

    def _count_placement(self, strategy: str, outcome: str) -> None:
        with self._lock:
            self._placements[(strategy, outcome)] += 1

    def placements(self) -> dict[tuple[str, str], int]:
        """(strategy, outcome) -> how many "devices: auto" launches were decided so."""
        with self._lock:
            return dict(self._placements)

    def of(self, kernel_id: str) -> Launch | None:
        """What the kernel started with (or applied in-process since); None when this server
        did not start it with a policy."""
        with self._lock:
            return self._launches.get(kernel_id)

    def kernel_ids(self) -> set[str]:
        """The kernels a launch is kept for."""
        with self._lock:
            return set(self._launches)

    def next_start(self, kernel_id: str, key: str | None) -> dict[str, Any]:
        """What the kernel gets to apply its notebook's current policy in-process: the
        environment and the launch document a start would give it now."""
        return self.policies.next_start(kernel_id, key, self.of(kernel_id))

    def applied_in_process(self, kernel_id: str, key: str | None) -> Launch:
        """The kernel applied its notebook's current policy in-process (no restart): the
        server's own rendering of it becomes its launch, never what the kernel claims."""
        started = self.of(kernel_id)
        now = self.policies.in_process(kernel_id, key, started)
        at = self.clock()
        launch = (
            started.applied_in_process(now, at)
            if started is not None
            else replace(now, in_process_at=at)
        )
        enforcement = self.hard_caps.in_process(started, launch, tuple(self.policies.devices))
        launch = replace(launch, enforcement=enforcement)
        with self._lock:
            self._launches[kernel_id] = launch
        return launch

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone: its launch, the GPUs placement reserved for it, and its hard cap
        (released in the hard caps' worker, not waited for)."""
        with self._lock:
            self._launches.pop(kernel_id, None)
        self.policies.release(kernel_id)
        self.hard_caps.release(kernel_id)

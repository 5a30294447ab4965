"""What each of this server's kernels started with (its ``Launch``), from its start until the
registry forgets it, and how many "devices: auto" launches were placed so (for metrics).

The provisioner starts a kernel through ``start``: the policy service renders the launch, the
ledger keeps it. A kernel that applies its notebook's policy in-process gets the server's own
rendering of it as its launch. Launches are read on the event loop and in the metrics' and
sampler's threads: a lock guards the table.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Mapping

from jupyter_tfgpu.policy import PolicyService
from jupyter_tfgpu.policy.launch import Launch


class KernelLaunches:
    """Each kernel's launch, by kernel id; owned by the kernel registry."""

    def __init__(self, policies: PolicyService, clock: Callable[[], float] = time.time) -> None:
        self.policies = policies
        self.clock = clock  # when a policy is applied in-process
        self._lock = threading.Lock()
        self._launches: dict[str, Launch] = {}
        # (strategy, outcome) -> how many "devices: auto" launches were decided so
        self._placements: collections.Counter[tuple[str, str]] = collections.Counter()

    def start(
        self,
        kernel_id: str | None,
        session_name: str | None,
        inherited: Mapping[str, str] | None = None,
    ) -> dict[str, str | None]:
        """The environment for a kernel about to start (``None``: remove the variable); its
        launch is kept under its id."""
        env, launch = self.policies.launch(
            kernel_id, session_name, inherited, placed=self._count_placement
        )
        if kernel_id:
            with self._lock:
                self._launches[kernel_id] = launch
        return env

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
        with self._lock:
            self._launches[kernel_id] = launch
        return launch

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone: its launch, and the GPUs placement reserved for it."""
        with self._lock:
            self._launches.pop(kernel_id, None)
        self.policies.release(kernel_id)

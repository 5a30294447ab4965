"""This server's kernels: followed through the kernel and session managers, and shown as the API,
the stream, the enforcer and metrics see them (``views``).

On the event loop only dict work is done: the process table (psutil, /proc) and the kernels'
record files are read in worker threads, so a start storm of kernels never stalls the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from jupyter_tfgpu.policy import PolicyService
from jupyter_tfgpu.server.kernels import views
from jupyter_tfgpu.server.kernels.attribution import Attribution, KernelProcess, start_times
from jupyter_tfgpu.server.kernels.channel import KernelReports, KernelTokens
from jupyter_tfgpu.server.kernels.enforcement import KernelFacts
from jupyter_tfgpu.server.kernels.launches import KernelLaunches
from jupyter_tfgpu.server.kernels.memory import KernelMemoryReader
from jupyter_tfgpu.server.kernels.records import read_record
from jupyter_tfgpu.server.kernels.views import KernelRow
from jupyter_tfgpu.server.hardcaps.service import HardCaps
from jupyter_tfgpu.server.sampling.sampler import Sampler

View = TypeVar("View")


class KernelGone(KeyError):
    """The kernel is not (or no longer) one of this server's: it stopped, maybe during an await."""

    def __str__(self) -> str:
        return f"no kernel {self.args[0]!r}: it is not running on this server"


class KernelRegistry:
    """Keeps attribution up to date with the kernel and session managers, and describes kernels."""

    def __init__(
        self,
        kernel_manager: Any,
        session_manager: Any,
        policies: PolicyService,
        sampler: Sampler,
        attribution: Attribution,
        record_root: str,
        tokens: KernelTokens | None = None,
        reports: KernelReports | None = None,
        log: logging.Logger | None = None,
        hard_caps: HardCaps | None = None,
    ) -> None:
        self.tokens = tokens or KernelTokens()
        self.reports = reports or KernelReports()
        self.kernel_manager = kernel_manager
        self.session_manager = session_manager
        self.policies = policies
        # What each kernel started with: kept from its start until it is forgotten here (how
        # its cap is enforced included: the server's hard caps prepare each start).
        self.launches = KernelLaunches(policies, hard_caps=hard_caps)
        self.sampler = sampler
        self.attribution = attribution
        self.record_root = record_root
        self.log = log or logging.getLogger(__name__)
        self._notebooks: dict[str, str] = {}
        self._pids: dict[str, int] = {}  # kernel id -> the PID refresh saw last
        self._failing: set[str] = set()  # kernels whose row failed, logged once
        self._running: asyncio.Future[None] | None = None  # the refresh at work
        self._queued: asyncio.Future[None] | None = None  # the one that runs after it
        self.memory = KernelMemoryReader(lambda: self.sampler.latest, self.reports)

    async def refresh(self) -> None:
        """Re-read kernels, their PIDs and their sessions' notebook paths.

        At most one refresh runs at a time: a caller that comes while one runs waits for the
        next one, which starts after it (and is shared by every caller that came meanwhile), so
        each caller sees a refresh begun after its call, and an older one never overwrites a
        newer one's result.
        """
        if self._queued is not None:
            return await asyncio.shield(self._queued)
        running = self._running
        if running is None or running.done():
            self._running = asyncio.ensure_future(self._refresh())
            return await asyncio.shield(self._running)
        self._queued = asyncio.ensure_future(self._refresh_after(running))
        await asyncio.shield(self._queued)

    async def _refresh_after(self, running: asyncio.Future[None]) -> None:
        await asyncio.wait([running])  # its outcome goes to its own callers
        self._queued = None
        self._running = asyncio.ensure_future(self._refresh())
        await self._running

    async def _refresh(self) -> None:
        notebooks: dict[str, str] = {}
        try:
            for session in await self.session_manager.list_sessions():
                kernel = session.get("kernel") or {}
                # The store's one spelling of the path, so every view names it alike.
                key = self.policies.keys.canonical(session.get("path"))
                if kernel.get("id") and key:
                    notebooks[kernel["id"]] = key
        except Exception:  # noqa: BLE001 - a session store hiccup must not stop attribution
            self.log.debug("could not list sessions", exc_info=True)
        self._notebooks = notebooks
        known = {k.pid: k for k in self.attribution.kernels}
        pids: dict[str, int] = {}  # every kernel's PID now, or the last one seen mid-restart
        running: dict[str, int] = {}  # the kernels with a process now
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            pid = self._pid(kernel_id)
            if pid:
                pids[kernel_id] = running[kernel_id] = pid
            elif kernel_id in self._pids:
                pids[kernel_id] = self._pids[kernel_id]  # mid-restart: compare next time
        # A process's start time tells it from a later process with its PID: read for processes
        # not seen before, in a thread (psutil reads /proc).
        new = {
            pid for kernel_id, pid in running.items()
            if known.get(pid) is None or known[pid].kernel_id != kernel_id
        }  # fmt: skip
        started = await asyncio.to_thread(start_times, new) if new else {}
        kernels = []
        for kernel_id, pid in running.items():
            if self._pids.get(kernel_id, pid) != pid:
                # Restarted: what its previous process reported no longer holds.
                self.reports.forget(kernel_id)
                self.memory.forget(kernel_id)
            began = started.get(pid) if pid in new else known[pid].started
            if began is not None:  # None: it is gone
                kernels.append(KernelProcess(kernel_id, pid, began, self.notebook_of(kernel_id)))
        self._pids = pids
        self.attribution.set_kernels(kernels)

    async def refresh_and_prune(self) -> None:
        """The periodic pass: refresh, then forget what is kept for kernels that are gone."""
        await self.refresh()
        await self.prune()

    def live_kernel_ids(self) -> set[str]:
        """Kernels of the kernel manager, and those it is still starting."""
        live = set(self.kernel_manager.list_kernel_ids())
        # jupyter_client keeps a kernel being started here (no public accessor); a start that
        # failed leaves its task done and the kernel never listed.
        pending = getattr(self.kernel_manager, "_pending_kernels", None) or {}
        live.update(k for k, task in list(pending.items()) if not task.done())
        return live

    async def prune(self) -> None:
        """Forget everything kept for kernels that are gone, or whose start failed (their
        launches and placements, tokens, reports and record folders)."""
        # The folder is listed too: a kernel's detached child can write its record after the
        # kernel was forgotten. Off the event loop, as anything a kernel can grow.
        folders = await asyncio.to_thread(self._record_folders)
        held = (
            self.launches.kernel_ids()
            | self.tokens.kernel_ids()
            | self.reports.kernel_ids()
            | self.memory.kernel_ids()
        )
        live = self.live_kernel_ids()
        self._failing &= live
        gone = (held | folders) - live
        if gone:
            for kernel_id in gone:
                self.forget(kernel_id)
            await asyncio.to_thread(lambda: [self.remove_record_folder(k) for k in gone])

    def _record_folders(self) -> set[str]:
        try:
            return set(os.listdir(self.record_root))
        except OSError:
            return set()

    def _kernel(self, kernel_id: str) -> Any:
        """The kernel manager's kernel, or KernelGone. Asked first: jupyter_server's manager
        raises an HTTP 404 of its own for an unknown kernel, jupyter_client's a KeyError."""
        if kernel_id not in self.kernel_manager:
            raise KernelGone(kernel_id)
        return self.kernel_manager.get_kernel(kernel_id)

    def _pid(self, kernel_id: str) -> int | None:
        try:
            return getattr(self._kernel(kernel_id).provisioner, "pid", None)
        except KernelGone:
            return None

    def _launched_notebook(self, kernel_id: str) -> str | None:
        launch = self.launches.of(kernel_id)
        return launch.notebook if launch is not None else None

    def has(self, kernel_id: str) -> bool:
        """Whether the kernel runs on this server."""
        return kernel_id in self.kernel_manager

    def notebook_of(self, kernel_id: str) -> str | None:
        """The notebook a kernel was started for, if any."""
        return self._notebooks.get(kernel_id) or self._launched_notebook(kernel_id)

    def forget(self, kernel_id: str) -> None:
        """A kernel shut down: drop what it started with, its token and what it reported."""
        self._failing.discard(kernel_id)
        self.launches.forget(kernel_id)
        self.tokens.revoke(kernel_id)
        self.reports.forget(kernel_id)
        self.memory.forget(kernel_id)

    async def stop(self) -> None:
        """The server stops: no refresh is left pending on its loop, and this server's record
        folder (every kernel's, the kernels' own processes may still write) is removed."""
        pending = [t for t in (self._queued, self._running) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._queued = self._running = None
        await asyncio.to_thread(shutil.rmtree, self.record_root, True)

    def remove_record_folder(self, kernel_id: str) -> None:
        """Delete a gone kernel's record folder; blocking (the kernel may have filled it)."""
        shutil.rmtree(os.path.join(self.record_root, kernel_id), ignore_errors=True)

    # -- the views ---------------------------------------------------------------------------

    def record(self, kernel_id: str, pid: int | None) -> dict[str, Any] | None:
        """What the kernel process's bootstrap recorded (applied / skipped per framework), or
        ``{"error": ...}`` when its record file cannot be used; blocking, so call it in a thread."""
        if not pid:
            return None
        return read_record(os.path.join(self.record_root, kernel_id, f"{pid}.json"))

    def row(self, kernel_id: str) -> KernelRow:
        """One kernel now, as every view is made from it (KernelGone if it is gone)."""
        kernel = self._kernel(kernel_id)
        provisioner = getattr(kernel, "provisioner", None)
        launch = self.launches.of(kernel_id)
        return KernelRow(
            kernel_id=kernel_id,
            name=getattr(kernel, "kernel_name", None),
            notebook=self.notebook_of(kernel_id),
            execution_state=getattr(kernel, "execution_state", None),
            last_activity=getattr(kernel, "last_activity", None),
            pid=getattr(provisioner, "pid", None),
            provisioner=type(provisioner).__name__ if provisioner is not None else None,
            launch=launch,
            memory=self.memory.of(kernel_id, launch.gpus if launch is not None else None),
        )

    async def describe(self, kernel_id: str) -> dict[str, Any]:
        """One kernel as ``GET kernels/{id}`` shows it (KernelGone if it is gone, also when it
        stopped while its record was read)."""
        row = self.row(kernel_id)
        # The kernel writes this file: read it off the event loop.
        record = await asyncio.to_thread(self.record, kernel_id, row.pid)
        if not self.has(kernel_id):
            raise KernelGone(kernel_id)
        return views.describe(row, self.policies, record)

    def _per_kernel(self, view: Callable[[KernelRow], View], what: str) -> list[View]:
        """``view(row)`` for every kernel; a kernel whose view fails is skipped (and logged once),
        so one kernel's bad figure never stops the enforcer, metrics or the stream."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(view(self.row(kernel_id)))
            except KernelGone:
                continue  # it stopped meanwhile
            except Exception:  # noqa: BLE001 - one kernel must not take the others down
                if kernel_id not in self._failing:
                    self._failing.add(kernel_id)
                    self.log.exception("jupyter-tfgpu: kernel %s skipped in %s", kernel_id, what)
        return rows

    def facts(self) -> list[KernelFacts]:
        """Each kernel's GPU memory, cap and idleness, for the enforcer."""
        now = datetime.now(timezone.utc)
        return self._per_kernel(lambda row: views.facts(row, self.policies, now), "enforcement")

    def summary(self) -> list[dict[str, Any]]:
        """A short view of every kernel, for the websocket stream."""
        return self._per_kernel(lambda row: views.summary(row, self.policies), "the stream")

    def metrics_rows(self) -> list[dict[str, Any]]:
        """Per kernel GPU memory, cap and idleness, for metrics and usage totals."""
        now = datetime.now(timezone.utc)
        return self._per_kernel(lambda row: views.metrics_row(row, self.policies, now), "metrics")

    async def list(self) -> list[dict[str, Any]]:
        """Every running kernel (those that stop meanwhile are left out)."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(self.row(kernel_id))
            except KernelGone:
                continue
        # One trip to a thread for every kernel's record file.
        records = await asyncio.to_thread(lambda: [self.record(r.kernel_id, r.pid) for r in rows])
        return [
            views.describe(row, self.policies, record)
            for row, record in zip(rows, records)
            if self.has(row.kernel_id)
        ]

"""This server's kernels: followed through the kernel and session managers, and shown as the API,
the stream, the enforcer and metrics see them (``views``)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from jupyter_tfgpu.policy import PolicyService
from jupyter_tfgpu.server.kernels import views
from jupyter_tfgpu.server.kernels.attribution import Attribution, KernelProcess, process_start
from jupyter_tfgpu.server.kernels.channel import KernelReports, KernelTokens
from jupyter_tfgpu.server.kernels.enforcement import KernelFacts
from jupyter_tfgpu.server.kernels.memory import KernelMemoryReader
from jupyter_tfgpu.server.kernels.records import read_record
from jupyter_tfgpu.server.kernels.views import KernelRow
from jupyter_tfgpu.server.sampling.sampler import Sampler

View = TypeVar("View")


class KernelRegistry:
    """Keeps attribution up to date with the kernel and session managers, and reports kernels."""

    def __init__(
        self,
        kernel_manager: Any,
        session_manager: Any,
        policies: PolicyService,
        sampler: Sampler,
        attribution: Attribution,
        report_root: str,
        tokens: KernelTokens | None = None,
        reports: KernelReports | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.tokens = tokens or KernelTokens()
        self.reports = reports or KernelReports()
        self.kernel_manager = kernel_manager
        self.session_manager = session_manager
        self.policies = policies
        self.sampler = sampler
        self.attribution = attribution
        self.report_root = report_root
        self.log = log or logging.getLogger(__name__)
        self._notebooks: dict[str, str] = {}
        self._pids: dict[str, int] = {}  # kernel id -> the PID refresh saw last
        self._failing: set[str] = set()  # kernels whose row failed, logged once
        self.memory = KernelMemoryReader(lambda: self.sampler.latest, self.reports)

    async def refresh(self) -> None:
        """Re-read kernels, their PIDs and their sessions' notebook paths."""
        notebooks: dict[str, str] = {}
        try:
            for session in await self.session_manager.list_sessions():
                kernel = session.get("kernel") or {}
                # The store's one spelling of the path, so every view names it alike.
                key = self.policies.canonical(session.get("path"))
                if kernel.get("id") and key:
                    notebooks[kernel["id"]] = key
        except Exception:  # noqa: BLE001 - a session store hiccup must not stop attribution
            self.log.debug("could not list sessions", exc_info=True)
        self._notebooks = notebooks
        known = {k.pid: k for k in self.attribution.kernels}
        kernels = []
        pids: dict[str, int] = {}
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            pid = self._pid(kernel_id)
            if not pid:
                if kernel_id in self._pids:
                    pids[kernel_id] = self._pids[kernel_id]  # mid-restart: compare next time
                continue
            pids[kernel_id] = pid
            if self._pids.get(kernel_id, pid) != pid:
                # Restarted: what its previous process reported no longer holds.
                self.reports.forget(kernel_id)
            previous = known.get(pid)
            if previous is not None and previous.kernel_id == kernel_id:
                started = previous.started
            else:
                started = process_start(pid)
            if started is None:
                continue
            kernels.append(KernelProcess(kernel_id, pid, started, self.notebook_of(kernel_id)))
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
        """Forget everything kept for kernels that are gone, or whose start failed (their policy
        documents and placements, tokens, reports and report folders)."""
        # The folder is listed too: a kernel's detached child can write its record after the
        # kernel was forgotten. Off the event loop, as anything a kernel can grow.
        folders = await asyncio.to_thread(self._report_folders)
        held = set(self.policies.applied) | self.tokens.kernel_ids() | self.reports.kernel_ids()
        live = self.live_kernel_ids()
        self._failing &= live
        gone = (held | folders) - live
        if gone:
            for kernel_id in gone:
                self.forget(kernel_id)
            await asyncio.to_thread(lambda: [self.remove_report_folder(k) for k in gone])

    def _report_folders(self) -> set[str]:
        try:
            return set(os.listdir(self.report_root))
        except OSError:
            return set()

    def _pid(self, kernel_id: str) -> int | None:
        try:
            return getattr(self.kernel_manager.get_kernel(kernel_id).provisioner, "pid", None)
        except (KeyError, AttributeError):
            return None

    def _applied_notebook(self, kernel_id: str) -> str | None:
        return (self.policies.applied.get(kernel_id) or {}).get("notebook")

    def has(self, kernel_id: str) -> bool:
        """Whether the kernel runs on this server."""
        return kernel_id in self.kernel_manager

    def notebook_of(self, kernel_id: str) -> str | None:
        """The notebook a kernel was started for, if any."""
        return self._notebooks.get(kernel_id) or self._applied_notebook(kernel_id)

    def forget(self, kernel_id: str) -> None:
        """A kernel shut down: drop what it started with, its token and what it reported."""
        self._failing.discard(kernel_id)
        self.policies.forget_kernel(kernel_id)
        self.tokens.revoke(kernel_id)
        self.reports.forget(kernel_id)

    def remove_report_folder(self, kernel_id: str) -> None:
        """Delete a gone kernel's report folder; blocking (the kernel may have filled it)."""
        shutil.rmtree(os.path.join(self.report_root, kernel_id), ignore_errors=True)

    # -- the views ---------------------------------------------------------------------------

    def report(self, kernel_id: str, pid: int | None) -> dict[str, Any] | None:
        """What the kernel process's bootstrap recorded (applied / skipped per framework), or
        ``{"error": ...}`` when its record file cannot be used; blocking, so call it in a thread."""
        if not pid:
            return None
        return read_record(os.path.join(self.report_root, kernel_id, f"{pid}.json"))

    def row(self, kernel_id: str) -> KernelRow:
        """One kernel now, as every view is made from it (KeyError if it is gone)."""
        kernel = self.kernel_manager.get_kernel(kernel_id)
        provisioner = getattr(kernel, "provisioner", None)
        return KernelRow(
            kernel_id=kernel_id,
            name=getattr(kernel, "kernel_name", None),
            notebook=self.notebook_of(kernel_id),
            execution_state=getattr(kernel, "execution_state", None),
            last_activity=getattr(kernel, "last_activity", None),
            pid=getattr(provisioner, "pid", None),
            provisioner=type(provisioner).__name__ if provisioner is not None else None,
            applied=self.policies.applied.get(kernel_id),
            memory=self.memory.of(kernel_id),
        )

    async def describe(self, kernel_id: str) -> dict[str, Any]:
        """One kernel as ``GET kernels/{id}`` shows it."""
        row = self.row(kernel_id)
        # The kernel writes this file: read it off the event loop.
        framework = await asyncio.to_thread(self.report, kernel_id, row.pid)
        return views.describe(row, self.policies, framework)

    def _per_kernel(self, view: Callable[[KernelRow], View], what: str) -> list[View]:
        """``view(row)`` for every kernel; a kernel whose view fails is skipped (and logged once),
        so one kernel's bad figure never stops the enforcer, metrics or the stream."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(view(self.row(kernel_id)))
            except KeyError:
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
        """Every running kernel."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(await self.describe(kernel_id))
            except KeyError:
                continue  # it stopped meanwhile
        return rows

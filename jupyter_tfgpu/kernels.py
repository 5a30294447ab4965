"""This server's kernels as the API shows them: notebook, GPU memory, policy, what was applied."""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from typing import Any

from .attribution import Attribution, KernelProcess, process_start
from .enforcement import KernelFacts
from .kernel_channel import KernelReports, KernelTokens
from .policy import PolicyService
from .sampler import Sampler


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

    async def refresh(self) -> None:
        """Re-read kernels, their PIDs and their sessions' notebook paths."""
        notebooks: dict[str, str] = {}
        try:
            for session in await self.session_manager.list_sessions():
                kernel = session.get("kernel") or {}
                if kernel.get("id") and session.get("path"):
                    notebooks[kernel["id"]] = session["path"]
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

    def _pid(self, kernel_id: str) -> int | None:
        try:
            return getattr(self.kernel_manager.get_kernel(kernel_id).provisioner, "pid", None)
        except (KeyError, AttributeError):
            return None

    def _applied_notebook(self, kernel_id: str) -> str | None:
        return (self.policies.applied.get(kernel_id) or {}).get("notebook")

    def notebook_of(self, kernel_id: str) -> str | None:
        """The notebook a kernel was started for, if any."""
        return self._notebooks.get(kernel_id) or self._applied_notebook(kernel_id)

    def forget(self, kernel_id: str) -> None:
        """A kernel shut down: drop what it started with, its token and what it reported."""
        self.policies.forget_kernel(kernel_id)
        self.tokens.revoke(kernel_id)
        self.reports.forget(kernel_id)
        shutil.rmtree(os.path.join(self.report_root, kernel_id), ignore_errors=True)

    # -- the API's view ----------------------------------------------------------------------

    def report(self, kernel_id: str, pid: int | None) -> dict[str, Any] | None:
        """What the kernel process's bootstrap recorded (applied / skipped per framework)."""
        if not pid:
            return None
        path = os.path.join(self.report_root, kernel_id, f"{pid}.json")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def gpu_memory(self, kernel_id: str) -> dict[str, Any]:
        """GPU memory held by the kernel, per GPU and in total (bytes), and where each figure
        comes from: "nvml" (its process tree's PIDs) or "kernel_report" (the framework's own
        figures, where NVML's PIDs cannot be matched, e.g. inside a container)."""
        per_gpu = []
        reported = (self.reports.get(kernel_id) or {}).get("devices", {})
        for gpu in self.sampler.latest.data.get("gpus", ()):
            mine = [
                p for p in gpu.get("processes", ())
                if p.get("kernel_id") == kernel_id and p.get("attributed_by") == "pid"
            ]
            keys = {gpu["uuid"], str(gpu["index"])} | {
                m["uuid"] for m in ((gpu.get("mig") or {}).get("instances") or ())
            }
            from_report = [held for key, held in reported.items() if key in keys]
            if mine:
                used = [p["used_memory"] for p in mine if p.get("used_memory") is not None]
                row = {"used_memory": sum(used) if used else None, "source": "nvml",
                       "pids": sorted(p["pid"] for p in mine)}
            elif from_report:
                row = {"used_memory": sum(from_report), "source": "kernel_report", "pids": []}
            else:
                continue
            per_gpu.append({"index": gpu["index"], "uuid": gpu["uuid"], **row})
        known = [g["used_memory"] for g in per_gpu if g["used_memory"] is not None]
        return {"total": sum(known), "per_gpu": per_gpu}

    def describe(self, kernel_id: str) -> dict[str, Any]:
        """One kernel as ``GET kernels/{id}`` shows it."""
        km = self.kernel_manager
        kernel = km.get_kernel(kernel_id)
        pid = self._pid(kernel_id)
        notebook = self.notebook_of(kernel_id)
        effective = self.policies.effective(notebook)
        applied = self.policies.applied.get(kernel_id)
        provisioner = getattr(kernel, "provisioner", None)
        return {
            "id": kernel_id,
            "name": getattr(kernel, "kernel_name", None),
            "notebook": notebook,
            "execution_state": getattr(kernel, "execution_state", None),
            "last_activity": _iso(getattr(kernel, "last_activity", None)),
            "pid": pid,
            "provisioner": type(provisioner).__name__ if provisioner is not None else None,
            "gpu_memory": self.gpu_memory(kernel_id),
            "policy": effective,
            "applied": applied,
            "restart_required": self.policies.restart_required(kernel_id, notebook),
            "framework": self.report(kernel_id, pid),
        }

    def facts(self) -> list[KernelFacts]:
        """Each kernel's GPU memory, cap and idleness, for the enforcer."""
        rows = []
        now = datetime.now(timezone.utc)
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                kernel = self.kernel_manager.get_kernel(kernel_id)
            except KeyError:
                continue
            memory = self.gpu_memory(kernel_id)
            per_gpu = [g["used_memory"] for g in memory["per_gpu"] if g["used_memory"] is not None]
            notebook = self.notebook_of(kernel_id)
            started = self.policies.applied.get(kernel_id)
            # The cap is the tighter of what the kernel started with and what is in force now.
            limits = [
                doc.get("memory_limit_mb")
                for doc in (started or {}, self.policies.effective(notebook))
                if doc.get("memory_limit_mb")
            ]
            limit_mb = min(limits) if limits else None
            idle = None
            last = getattr(kernel, "last_activity", None)
            if getattr(kernel, "execution_state", None) == "idle" and isinstance(last, datetime):
                idle = max(0.0, (now - last).total_seconds())
            rows.append(
                KernelFacts(
                    kernel_id=kernel_id,
                    notebook=notebook,
                    peak_gpu_bytes=max(per_gpu, default=0),
                    total_gpu_bytes=sum(per_gpu),
                    limit_bytes=limit_mb * 2**20 if limit_mb else None,
                    idle_seconds=idle,
                )
            )
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """A short view of every kernel, for the websocket stream."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                kernel = self.kernel_manager.get_kernel(kernel_id)
            except KeyError:
                continue
            notebook = self.notebook_of(kernel_id)
            applied = self.policies.applied.get(kernel_id)
            rows.append(
                {
                    "id": kernel_id,
                    "notebook": notebook,
                    "execution_state": getattr(kernel, "execution_state", None),
                    "gpu_memory": self.gpu_memory(kernel_id)["total"],
                    "memory_limit_mb": (applied or {}).get("memory_limit_mb"),
                    "restart_required": self.policies.restart_required(kernel_id, notebook),
                }
            )
        return rows

    def memory_rows(self) -> list[dict[str, Any]]:
        """Per kernel GPU memory rows, for metrics."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            rows.append(
                {"kernel_id": kernel_id, "notebook": self.notebook_of(kernel_id), **self.gpu_memory(kernel_id)}
            )
        return rows

    def list(self) -> list[dict[str, Any]]:
        """Every running kernel."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(self.describe(kernel_id))
            except KeyError:
                continue  # it stopped meanwhile
        return rows


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None

"""This server's kernels as the API shows them: notebook, GPU memory, policy, what was applied."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from jupyter_tfgpu.server.kernels.attribution import Attribution, KernelProcess, process_start
from jupyter_tfgpu.server.kernels.enforcement import KernelFacts
from jupyter_tfgpu.server.kernels.channel import KernelReports, KernelTokens
from jupyter_tfgpu.policy import PolicyService
from jupyter_tfgpu.server.sampling.sampler import Sampler

# The bootstrap's record is a few KiB; the kernel writes the file, so its size is not trusted.
MAX_RECORD_BYTES = 256 * 1024
# The record's fields (tfgpu_apply.record()) and the JSON types each must have when present.
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "pid": (int,),
    "ppid": (int,),
    "policy": (dict, type(None)),
    "frameworks": (dict,),
    "errors": (list,),
    "reporter": (dict, type(None)),
}
Row = TypeVar("Row")


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

    # -- the API's view ----------------------------------------------------------------------

    def report(self, kernel_id: str, pid: int | None) -> dict[str, Any] | None:
        """What the kernel process's bootstrap recorded (applied / skipped per framework), or
        ``{"error": ...}`` when its record file cannot be used; blocking, so call it in a thread."""
        if not pid:
            return None
        return read_record(os.path.join(self.report_root, kernel_id, f"{pid}.json"))

    def gpu_memory(self, kernel_id: str) -> dict[str, Any]:
        """GPU memory held by the kernel, per GPU and in total (bytes), and where each figure
        comes from: "nvml" (its process tree's PIDs) or "kernel_report" (the framework's own
        figures, where NVML's PIDs cannot be matched, e.g. inside a container, or NVML has no
        figure for them)."""
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
            pids = sorted(p["pid"] for p in mine)
            used = [p["used_memory"] for p in mine if p.get("used_memory") is not None]
            if used:
                row = {"used_memory": sum(used), "source": "nvml", "pids": pids}
            elif from_report:
                # NVML lists none of the kernel's PIDs here, or gives no figure for them (N/A).
                row = {"used_memory": sum(from_report), "source": "kernel_report", "pids": pids}
            elif mine:
                row = {"used_memory": None, "source": "nvml", "pids": pids}
            else:
                continue
            per_gpu.append({"index": gpu["index"], "uuid": gpu["uuid"], **row})
        known = [g["used_memory"] for g in per_gpu if g["used_memory"] is not None]
        return {"total": sum(known), "per_gpu": per_gpu}

    async def describe(self, kernel_id: str) -> dict[str, Any]:
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
            # The kernel writes this file: read it off the event loop.
            "framework": await asyncio.to_thread(self.report, kernel_id, pid),
        }

    def _per_kernel(self, build: Callable[[str], Row], what: str) -> list[Row]:
        """``build(kernel_id)`` for every kernel; a kernel whose row fails is skipped (and logged
        once), so one kernel's bad figure never stops the enforcer, metrics or the stream."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(build(kernel_id))
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
        return self._per_kernel(lambda kernel_id: self._facts(kernel_id, now), "enforcement")

    def _facts(self, kernel_id: str, now: datetime) -> KernelFacts:
        kernel = self.kernel_manager.get_kernel(kernel_id)
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
        return KernelFacts(
            kernel_id=kernel_id,
            notebook=notebook,
            peak_gpu_bytes=max(per_gpu, default=0),
            total_gpu_bytes=sum(per_gpu),
            limit_bytes=limit_mb * 2**20 if limit_mb else None,
            idle_seconds=idle,
        )

    def summary(self) -> list[dict[str, Any]]:
        """A short view of every kernel, for the websocket stream."""
        return self._per_kernel(self._summary, "the stream")

    def _summary(self, kernel_id: str) -> dict[str, Any]:
        kernel = self.kernel_manager.get_kernel(kernel_id)
        notebook = self.notebook_of(kernel_id)
        applied = self.policies.applied.get(kernel_id)
        return {
            "id": kernel_id,
            "notebook": notebook,
            "execution_state": getattr(kernel, "execution_state", None),
            "gpu_memory": self.gpu_memory(kernel_id)["total"],
            "memory_limit_mb": (applied or {}).get("memory_limit_mb"),
            "restart_required": self.policies.restart_required(kernel_id, notebook),
        }

    def memory_rows(self) -> list[dict[str, Any]]:
        """Per kernel GPU memory rows, for metrics."""
        return self._per_kernel(
            lambda kernel_id: {
                "kernel_id": kernel_id,
                "notebook": self.notebook_of(kernel_id),
                **self.gpu_memory(kernel_id),
            },
            "metrics",
        )

    async def list(self) -> list[dict[str, Any]]:
        """Every running kernel."""
        rows = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                rows.append(await self.describe(kernel_id))
            except KeyError:
                continue  # it stopped meanwhile
        return rows


def read_record(path: str) -> dict[str, Any] | None:
    """A kernel process's record file: None when there is none, ``{"error": ...}`` when it is
    too large, not a file, not JSON or not shaped like a record."""
    try:
        # O_NONBLOCK: a FIFO put there must not hang the reading thread; O_NOFOLLOW: no links.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        return {"error": f"the record file could not be opened ({err.strerror})"}
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return {"error": "the record file is not a regular file; not read"}
        if info.st_size > MAX_RECORD_BYTES:
            return {"error": _too_large(info.st_size)}
        data = f.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:  # it grew since fstat
        return {"error": _too_large(len(data))}
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        return {"error": "the record file is not valid JSON"}
    if not isinstance(record, dict):
        return {"error": "the record file does not hold a JSON object"}
    for name, types in RECORD_FIELDS.items():
        value = record.get(name)
        if name in record and (not isinstance(value, types) or isinstance(value, bool)):
            return {"error": f"the record file's {name!r} has the wrong type"}
    return record


def _too_large(size: int) -> str:
    return f"the record file is {size} bytes, over the limit of {MAX_RECORD_BYTES}; not read"


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None

"""One run of the check: the server, its kernels, what GET gpus shows, the checks in order."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from gpu_check_runner.checks import CheckFunction
from gpu_check_runner.kernels import Kernel, kernel_code
from gpu_check_runner.phases import PHASES, numbered, run_phase
from gpu_check_runner.probe import probe_host
from gpu_check_runner.report import Check, conclude, machine_info, mib
from gpu_check_runner.server import Server

# The variables the probe reads in each kernel: what the provisioner sets, and the session name.
ENV_NAMES = (
    "CUDA_VISIBLE_DEVICES",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "JAX_PLATFORMS",
    "PYTORCH_ALLOC_CONF",
    "PYTORCH_CUDA_ALLOC_CONF",
    "JPY_SESSION_NAME",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
)
ADMIN_MB_UNKNOWN_GPU = 16384  # the hard-caps servers' admin cap where no GPU size is known


class Interrupted(BaseException):
    """SIGTERM (e.g. `timeout` ran out): stop, clean up, still print the report."""


class OutOfTimeError(RuntimeError):
    """The check's own time budget ran out."""


class GpuCheck:
    """Runs the checks against one server and builds the report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.simulated = args.backend == "simulated"
        self.deadline = time.monotonic() + args.budget
        self.workdir = Path(tempfile.mkdtemp(prefix="tfgpu-gpu-check-"))
        wanted = args.phases.split(",") if getattr(args, "phases", None) else None
        self.phases = [phase for phase in PHASES if wanted is None or phase.name in wanted]
        self.servers: list[Server] = []  # one per phase, the running one last
        self.server = Server(self.workdir / "none", args.backend)  # replaced by each phase's
        self.kernels: list[Kernel] = []  # live ones
        self.all_pids: dict[int, str] = {}  # every kernel pid seen -> kernel id, for cleanup
        self.observations: list[dict[str, Any]] = []
        self.gpu_total = 0
        self.gpu_uuids: list[str] = []  # the current server's GPUs, by index
        # The current phase: GET status' hard_caps as its server started and before it stopped,
        # its admin cap, where its observations start, its server's pid and how it stopped.
        self.hard_caps: dict[str, Any] = {}
        self.hard_caps_end: dict[str, Any] = {}
        self.admin_mb = ADMIN_MB_UNKNOWN_GPU
        self.phase_observations = 0
        self.phase_server_pid: int | None = None
        self.phase_stop: str | None = None
        self.start_costs: dict[str, dict[str, float]] = {}  # per mode, check 9's medians
        self.server_log_tail: list[str] = []
        self.report: dict[str, Any] = {
            "check": "jupyter-tfgpu gpu-check",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": args.backend,
            "dry_run": self.simulated,
            "result": None,
            "machine": machine_info(args.context),
        }

    # -- time --------------------------------------------------------------------------------

    def within(self, seconds: float) -> float:
        """``seconds``, cut to what is left of the budget; OutOfTimeError when nothing is."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OutOfTimeError(f"the check's budget of {self.args.budget:.0f} s ran out")
        return min(seconds, left)

    # -- kernels -----------------------------------------------------------------------------

    def start_kernel(self, check: Check, notebook: str, policy: dict[str, Any] | None) -> Kernel:
        """PUT the policy, start a session the way JupyterLab does, probe the kernel."""
        nb_file = self.server.root / notebook
        nb_file.write_text(
            json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
        )
        stored = None
        if policy is not None:
            quoted = urllib.parse.quote(notebook)
            stored = self.server.api("PUT", f"tfgpu/api/policies/{quoted}", policy).get("policy")
        body = {
            "path": notebook,
            "name": notebook,
            "type": "notebook",
            "kernel": {"name": "python3"},
        }
        started = time.monotonic()
        session = self.server.api("POST", "api/sessions", body, timeout=self.within(90))
        kernel = Kernel(notebook, session, self.server.runtime)
        self.kernels.append(kernel)
        kernel.connect(self.within(90))
        view = self.server.api("GET", f"tfgpu/api/kernels/{kernel.id}")
        kernel.pid = view.get("pid")
        kernel.applied = view.get("applied") or {}
        if kernel.pid:
            self.all_pids[kernel.pid] = kernel.id
        kernel.probe = kernel.run(kernel_code("probe", env_names=ENV_NAMES), self.within(30))
        self.report.setdefault(
            "kernel_python",
            {key: kernel.probe.get(key) for key in ("executable", "python", "frameworks")},
        )
        check.measured.setdefault("kernel_start_s", {})[notebook] = round(
            time.monotonic() - started, 2
        )
        doc = kernel.probe.get("policy") or {}
        details = {
            "stored_policy": stored,
            "provisioner": view.get("provisioner"),
            "applied_kernel_id": (view.get("applied") or {}).get("kernel_id"),
            "policy_notebook": doc.get("notebook"),
            "bootstrap_loaded": kernel.probe.get("bootstrap_loaded"),
            "probe_pid": kernel.probe.get("pid"),
            "api_pid": kernel.pid,
        }
        ok = (
            stored == policy
            and details["provisioner"] == "TFGPUProvisioner"
            and details["applied_kernel_id"] == kernel.id
            and details["policy_notebook"] == notebook
            and details["bootstrap_loaded"]
            and details["probe_pid"] == kernel.pid
        )
        what = "PUT policies/{0} stored; " if policy is not None else ""
        check.expect(
            what.format(notebook)
            + f"{notebook} started by the tfgpu provisioner with its policy; bootstrap loaded",
            ok,
            **({} if ok else details),
        )
        return kernel

    def stop_kernels(self, kernels: list[Kernel]) -> None:
        """DELETE their sessions and wait until no GPU lists their processes."""
        pids = {k.pid for k in kernels if k.pid}
        for kernel in kernels:
            self.end_session(kernel, 30)
        end = time.monotonic() + min(30, max(1, self.deadline - time.monotonic()))
        while pids and time.monotonic() < end:
            rows = self.rows(self.server.api("GET", "tfgpu/api/gpus"))
            if not any(row["pid"] in pids for _, row in rows):
                return
            time.sleep(0.5)

    def end_session(self, kernel: Kernel, timeout: float) -> None:
        """Close our client and DELETE the session (the server shuts the kernel down)."""
        kernel.close()
        with contextlib.suppress(Exception):  # the server's own shutdown and cleanup() remain
            self.server.api("DELETE", f"api/sessions/{kernel.session_id}", timeout=timeout)
        if kernel in self.kernels:
            self.kernels.remove(kernel)

    # -- what the server shows ---------------------------------------------------------------

    @staticmethod
    def rows(snapshot: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(gpu, process row) for every process on every GPU."""
        return [
            (gpu, row) for gpu in snapshot.get("gpus", []) for row in gpu.get("processes") or []
        ]

    def observe(
        self, label: str, expect: dict[Kernel, int | None], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll GET gpus until each kernel is listed (>= bytes, attributed) or not (None).

        Then read GET kernels too. The observation is kept for checks (6) and (7).
        """
        started = time.monotonic()
        end = started + self.within(timeout)
        while True:
            snapshot = self.server.api("GET", "tfgpu/api/gpus")
            rows = self.rows(snapshot)
            settled = time.monotonic() - started >= 3.0 or all(
                v is not None for v in expect.values()
            )
            for kernel, least in expect.items():
                mine = [row for _, row in rows if row["pid"] == kernel.pid]
                if least is None:
                    settled = settled and not mine
                else:
                    used = sum(row.get("used_memory") or 0 for row in mine)
                    settled = (
                        settled
                        and bool(mine)
                        and used >= least
                        and all(row.get("kernel_id") for row in mine)
                    )
            if settled or time.monotonic() >= end:
                break
            time.sleep(0.5)
        views = {
            view["id"]: view for view in self.server.api("GET", "tfgpu/api/kernels")["kernels"]
        }
        ours = {k.pid: k for k in self.kernels if k.pid}
        observation: dict[str, Any] = {
            "label": label,
            "settled": settled,
            "waited_s": round(time.monotonic() - started, 1),
            "rows": [
                {
                    "gpu": g["index"],
                    "pid": r["pid"],
                    "used_mib": mib(r.get("used_memory")),
                    "kernel_id": r.get("kernel_id"),
                    "notebook": r.get("notebook"),
                    "mps": r.get("mps"),
                    "ours": r["pid"] in ours,
                    "expected_kernel_id": ours[r["pid"]].id if r["pid"] in ours else None,
                    "expected_notebook": ours[r["pid"]].notebook if r["pid"] in ours else None,
                }
                for g, r in rows
            ],
            "kernels": {},
        }
        for kernel, least in expect.items():
            mine = [row for _, row in rows if row["pid"] == kernel.pid]
            view = views.get(kernel.id, {})
            observation["kernels"][kernel.notebook] = {
                "kernel_id": kernel.id,
                "pid": kernel.pid,
                "on_gpu": least is not None,
                "listed": bool(mine),
                "nvml_used": sum(row.get("used_memory") or 0 for row in mine) if mine else 0,
                "api_total": (view.get("gpu_memory") or {}).get("total"),
                "api_notebook": view.get("notebook"),
                "api_pids": sorted(
                    p
                    for g in (view.get("gpu_memory") or {}).get("per_gpu", [])
                    for p in g.get("pids", [])
                ),
            }
        self.observations.append(observation)
        return observation

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Record the probe, run each phase's server and checks, stop everything, report."""
        report = self.report
        report["checks"] = []
        report["hard_caps"] = {"probe": probe_host()}
        errors: list[str] = []
        t0 = time.monotonic()
        try:
            for phase in self.phases:
                try:
                    run_phase(self, phase)
                except Exception as err:  # noqa: BLE001 - the next server's checks still run
                    errors.append(f"{phase.name}: {type(err).__name__}: {err}")
        except (Exception, Interrupted) as err:  # noqa: BLE001 - the report must still be printed
            errors.append(f"{type(err).__name__}: {err}")
        finally:
            report["cleanup"] = self.cleanup()
        done = {entry["id"] for entry in report["checks"]}
        for phase in self.phases:
            for number, check, _ in numbered(phase):
                if number not in done:
                    entry = Check(number, check).finish(0)
                    entry["error"] = "not run: " + (errors[0] if errors else "unknown")
                    report["checks"].append(entry)
        report["checks"].sort(key=lambda entry: entry["id"])
        return conclude(report, errors, self.simulated, time.monotonic() - t0, self.server_log_tail)

    def wait_for_gpus(self) -> dict[str, Any]:
        """The first snapshot with GPUs in it (the sampler's first round may not be done)."""
        end = time.monotonic() + self.within(30)
        while True:
            snapshot = self.server.api("GET", "tfgpu/api/gpus")
            if snapshot.get("gpus"):
                return snapshot
            if time.monotonic() > end:
                raise RuntimeError(f"GET gpus lists no GPU: {json.dumps(snapshot)[:300]}")
            time.sleep(0.25)

    def run_check(self, number: int, function: CheckFunction) -> None:
        """Run one check into the report; its kernels are stopped afterwards whatever happened."""
        check = Check(number, function)
        started = time.monotonic()
        before = list(self.kernels)
        try:
            function(self, check)
        except (OutOfTimeError, Interrupted) as err:  # this check fails, and so does the run
            check.error = f"{type(err).__name__}: {err}"
            raise
        except Exception as err:  # noqa: BLE001 - one check's failure is reported, the rest go on
            check.error = f"{type(err).__name__}: {err}"[:1500]
        finally:
            mine = [k for k in self.kernels if k not in before]
            failed = check.error or any(not e["ok"] for e in check.expectations)
            for kernel in mine:
                if kernel.stderr and failed:
                    stderr = "".join(kernel.stderr)[-1500:]
                    check.measured.setdefault("kernel_stderr", {})[kernel.notebook] = stderr
            try:
                if mine:
                    self.stop_kernels(mine)
            finally:
                self.report["checks"].append(check.finish(time.monotonic() - started))

    def cleanup(self) -> dict[str, Any]:
        """Sessions, then the server, then any kernel process of ours still alive."""
        for kernel in list(self.kernels):
            self.end_session(kernel, 15)
        outcome: dict[str, Any] = {"server": [server.stop() for server in self.servers]}
        killed = []
        for pid, kernel_id in self.all_pids.items():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone
            if f"kernel-{kernel_id}.json".encode() in cmdline:  # still our kernel, not a reused PID
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except OSError:
                    pass
        outcome["kernels_killed"] = killed
        out = os.environ.get("OUT")
        for server in self.servers if out else ():
            if server.log_path.exists():
                log = server.log_path.read_text(errors="replace").replace(server.token, "<token>")
                suffix = "" if server is self.servers[0] else f"-{server.dir.name}"
                Path(out, f"gpu-check-server{suffix}.log").write_text(log)
        self.server_log_tail = self.server.log_tail(25)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return outcome

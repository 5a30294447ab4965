"""The prepared GPU check: a real jupyter_server with jupyter-tfgpu, real kernels, one JSON report.

Run on the GPU machine by scripts/gpu-check.sh (``--backend nvml``), and here as a dry run
(``--backend simulated``): the server, sessions, policies, provisioner and attribution really
run; the checks that need JAX or PyTorch report ``skipped`` with the reason where the kernel's
Python lacks them, and the simulated backend (which reports a process's real resident memory as
its GPU memory) stands in for NVML in the attribution checks.

Stdlib only, plus jupyter_client to talk to the kernels; HTTP goes through urllib. Every wait is
bounded, and kernels and server are shut down at the end, also on failure or SIGTERM. Prints one
JSON document (also written to $OUT/gpu-check.json when OUT is set); the exit code is 0 only when
the report's result is "pass". This file is longer than the house's ~400 lines because it is one
self-contained script carried to a bare machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

MiB = 2**20
GiB = 2**30
BASE_URL = "/tfgpu-check/"
# Memory NVML may show for a process beyond its cap: the CUDA context and the libraries a
# framework loads (cuBLAS, cuDNN). Measured overheads go into the report.
DEFAULT_MARGIN_MIB = 1536
JAX_DEFAULT_RANGE = (0.70, 0.85)  # JAX preallocates 75% of the GPU unless told otherwise
GROWTH_MAX_FRACTION = 0.25  # "far less than 75%"
CAP_SHARE = 0.18  # check 2: four kernels, each capped at 18% of the GPU
TORCH_LIMIT_MB = 2048
HOST_ALLOC = 128 * MiB  # dry run: host memory a kernel allocates for the simulated backend to see
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
)

# -- code run inside the kernels (each prints one JSON line) --------------------------------------

PROBE = f"""
import importlib.util, json, os, sys
_env = {{n: os.environ.get(n) for n in {ENV_NAMES!r}}}
try:
    _policy = json.loads(os.environ.get("TFGPU_POLICY") or "null")
except ValueError as _exc:
    _policy = {{"unreadable": str(_exc)}}
print(json.dumps({{
    "pid": os.getpid(), "python": sys.version.split()[0], "executable": sys.executable,
    "env": _env, "policy": _policy,
    "bootstrap_loaded": "tfgpu_bootstrap" in sys.modules,
    "frameworks": {{n: importlib.util.find_spec(n) is not None for n in ("jax", "torch", "numpy")}},
}}))
"""


def jax_alloc_code(nbytes: int) -> str:
    """Allocate ``nbytes`` on the default JAX device and keep it alive; report its allocator."""
    return f"""
import json, jax, jax.numpy as jnp
_tfgpu_hold = jnp.ones(({nbytes // 4},), dtype=jnp.float32)
_tfgpu_hold.block_until_ready()
_dev = jax.devices()[0]
try:
    _stats = _dev.memory_stats() or {{}}
except Exception:
    _stats = {{}}
_out = {{"jax": jax.__version__, "backend": jax.default_backend(), "device": str(_dev)}}
for _k in ("bytes_in_use", "bytes_limit", "peak_bytes_in_use"):
    _out[_k + "_mib"] = None if _stats.get(_k) is None else round(_stats[_k] / 2**20, 1)
print(json.dumps(_out))
"""


TORCH_CODE = """
import json, torch, tfgpu_bootstrap
_out = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
_tfgpu_hold = torch.empty(2**30, dtype=torch.uint8, device="cuda")
_tfgpu_hold.fill_(1)
torch.cuda.synchronize()
_out["alloc_1gib"] = "ok"
_out["total_memory"] = torch.cuda.get_device_properties(0).total_memory
try:
    _big = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")
    _out["alloc_4gib"] = "no error"
    del _big
except torch.cuda.OutOfMemoryError as _exc:
    _out["alloc_4gib"] = "OutOfMemoryError"
    _out["oom_message"] = str(_exc)[:700]
_get = getattr(torch.cuda, "get_per_process_memory_fraction", None)
_out["fraction_reported"] = _get(0) if _get else None
_out["memory_reserved"] = torch.cuda.memory_reserved()
_out["record"] = tfgpu_bootstrap.record()["frameworks"].get("torch")
print(json.dumps(_out, default=repr))
"""

CPU_ONLY_CODE = """
import importlib.util, json
_out = {}
if importlib.util.find_spec("torch"):
    import torch
    _out.update(torch=torch.__version__, torch_cuda_available=torch.cuda.is_available(),
                torch_device_count=torch.cuda.device_count())
if importlib.util.find_spec("jax"):
    import jax
    _out.update(jax=jax.__version__, jax_backend=jax.default_backend(),
                jax_devices=[f"{d.platform}:{d.id}" for d in jax.devices()])
print(json.dumps(_out))
"""


def host_alloc_code(nbytes: int) -> str:
    """Allocate ``nbytes`` of host memory (touched, so it is resident) and keep it alive."""
    return f"""
import json
try:
    import numpy as _np
    _tfgpu_host = _np.ones({nbytes}, dtype=_np.uint8)
    _how = "numpy " + _np.__version__
except ImportError:
    _tfgpu_host = bytearray(b"\\x01") * {nbytes}
    _how = "bytearray"
print(json.dumps({{"host_bytes": {nbytes}, "how": _how}}))
"""


# -- wheels (gpu-check.sh asks, before anything is installed) --------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def plan_wheels(directory: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Which carried wheels to install: those the image lacks or has in an unsuitable version."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # then any installed version counts as good enough
        Requirement = None  # noqa: N806
    wheels = sorted(Path(directory).glob("*.whl"))
    needs: dict[str, list[str]] = {}
    if Requirement is not None:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                headers = archive.read(meta).decode("utf-8", "replace").split("\n\n", 1)[0]
            for line in headers.splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                if str(req.specifier):
                    needs.setdefault(_norm(req.name), []).append(str(req.specifier))
    install, decisions = [], []
    for wheel in wheels:
        name = wheel.name.split("-")[0]
        key = _norm(name)
        try:
            present = metadata.version(name)
        except metadata.PackageNotFoundError:
            present = None
        decision = {"wheel": wheel.name, "image_version": present, "requires": needs.get(key, [])}
        unmet = []
        if present is not None and Requirement is not None:
            unmet = [
                s
                for s in needs.get(key, [])
                if not SpecifierSet(s).contains(Version(present), prereleases=True)
            ]
        if present is None or unmet or key == "jupyter-tfgpu":
            if present is None:
                decision["action"] = "install"
            elif unmet:
                decision["action"] = f"install (image's {present} fails {', '.join(unmet)})"
            else:
                decision["action"] = "install (the package under test)"
            install.append(str(wheel))
        else:
            decision["action"] = "skip (the image's version satisfies the other wheels)"
        decisions.append(decision)
    return install, decisions


# -- the server --------------------------------------------------------------------------------


class ApiError(RuntimeError):
    """An HTTP error answer from the server."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


class Interrupted(BaseException):
    """SIGTERM (e.g. `timeout` ran out): stop, clean up, still print the report."""


class OutOfTimeError(RuntimeError):
    """The check's own time budget ran out."""


class Server:
    """A `python -m jupyter_server` subprocess with jupyter-tfgpu, in throw-away folders."""

    def __init__(self, workdir: Path, backend: str):
        self.dir = workdir
        self.backend = backend
        self.root = workdir / "root"
        self.runtime = workdir / "runtime"
        self.log_path = workdir / "server.log"
        self.token = secrets.token_hex(24)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Write config and kernelspec, start the server."""
        config, data = self.dir / "config", self.dir / "data"
        for folder in (
            self.root,
            self.runtime,
            config,
            data,
            self.dir / "home",
            self.dir / "ipython",
        ):
            folder.mkdir(parents=True, exist_ok=True)
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_tfgpu": True}}})
        )
        # Our own python3 kernelspec: the kernels must run this interpreter (the one with the
        # frameworks), whatever kernelspecs the machine has in its system folders.
        spec = data / "kernels" / "python3"
        spec.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "Python 3 (gpu-check)", "language": "python"})
        )
        env = dict(
            os.environ,
            HOME=str(self.dir / "home"),
            JUPYTER_CONFIG_DIR=str(config),
            JUPYTER_DATA_DIR=str(data),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            IPYTHONDIR=str(self.dir / "ipython"),
            PYTHONUNBUFFERED="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={BASE_URL}",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.allow_unauthenticated_access=False",
            f"--TFGPU.backend={self.backend}",
            "--TFGPU.sample_interval=0.5",
            "--TFGPU.process_interval=1.0",
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """One JSON request under base_url; raises ApiError on an HTTP error."""
        url = f"http://127.0.0.1:{self.port}{BASE_URL}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"token {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiError(method, path, err.code, err.read().decode("utf-8", "replace")) from None
        return json.loads(text) if text.strip() else None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll GET tfgpu/api/status until it answers."""
        end = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            try:
                return self.api("GET", "tfgpu/api/status", timeout=5)
            except (OSError, ApiError):
                if time.monotonic() > end:
                    raise TimeoutError(
                        f"the server did not answer within {timeout:.0f} s"
                    ) from None
                time.sleep(0.25)

    def stop(self) -> str:
        """Ask the server to shut down (it stops its kernels), then terminate, then kill."""
        if self.proc is None or self.proc.poll() is not None:
            return "not running"
        try:
            self.api("POST", "api/shutdown", timeout=10)
            self.proc.wait(20)
            return "shut down"
        except (OSError, ApiError, subprocess.TimeoutExpired):
            pass
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                return f"stopped with {sig.name}"
            except (OSError, subprocess.TimeoutExpired):
                continue
        return "could not be stopped"

    def log_tail(self, lines: int = 40) -> list[str]:
        """The end of the server's log (token masked)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line.replace(self.token, "<token>")[:240] for line in text.splitlines()[-lines:]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- kernels -----------------------------------------------------------------------------------


class KernelError(RuntimeError):
    """Code run in a kernel raised."""


class Kernel:
    """A kernel started through POST api/sessions, reached through its connection file."""

    def __init__(self, notebook: str, session: dict[str, Any], runtime: Path):
        self.notebook = notebook
        self.session_id = session["id"]
        self.id = session["kernel"]["id"]
        self.connection_file = runtime / f"kernel-{self.id}.json"
        self.client = None
        self.pid: int | None = None
        self.probe: dict[str, Any] = {}
        self.stderr: list[str] = []

    def connect(self, timeout: float) -> None:
        """Load the connection file the server wrote and wait for the kernel to answer."""
        from jupyter_client import BlockingKernelClient

        end = time.monotonic() + timeout
        while not self.connection_file.exists():
            if time.monotonic() > end:
                raise TimeoutError(f"no connection file {self.connection_file.name}")
            time.sleep(0.1)
        client = BlockingKernelClient()
        client.load_connection_file(str(self.connection_file))
        client.start_channels()
        self.client = client
        # Not client.wait_for_ready(): without a kernel manager it takes a heartbeat that has
        # not answered within 1 s for a dead kernel, and a kernel still importing its
        # libraries is not dead. The server's kernel manager watches the process itself.
        while True:
            client.kernel_info()
            try:
                reply = client.get_shell_msg(timeout=1.0)
            except queue.Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:  # iopub subscribed too (its status messages arrive), or outputs are lost
                    client.get_iopub_msg(timeout=0.5)
                    return
                except queue.Empty:
                    pass
            if time.monotonic() > end:
                raise TimeoutError("the kernel did not answer kernel_info")

    def run(self, code: str, timeout: float) -> Any:
        """Execute code; return its last stdout line parsed as JSON (KernelError if it raised)."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                (out if content["name"] == "stdout" else self.stderr).append(content["text"])
            elif msg["msg_type"] == "error":
                trace = "\n".join(content.get("traceback") or [])
                errors.append(re.sub(r"\x1b\[[0-9;]*m", "", trace)[-1500:])

        reply = self.client.execute_interactive(
            code, timeout=timeout, output_hook=hook, allow_stdin=False, store_history=False
        )
        if reply["content"]["status"] != "ok" or errors:
            raise KernelError("".join(errors) or reply["content"].get("evalue", "kernel error"))
        lines = "".join(out).strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def close(self) -> None:
        """Stop this client's channels."""
        if self.client is not None:
            with contextlib.suppress(Exception):  # cleanup goes on
                self.client.stop_channels()
            self.client = None


# -- checks ------------------------------------------------------------------------------------


class Check:
    """One report entry: expectations that held or not, what was measured, why skipped."""

    def __init__(self, number: int, method: Any):
        what = " ".join(method.__doc__.split()).split(") ", 1)[-1]
        name = method.__name__.removeprefix("check_")
        self.entry: dict[str, Any] = {"id": number, "name": name, "what": what, "status": None}
        self.expectations: list[dict[str, Any]] = []
        self.measured: dict[str, Any] = {}
        self.skipped: list[str] = []
        self.error: str | None = None

    def expect(self, what: str, ok: Any, **values: Any) -> bool:
        """Record one expectation."""
        self.expectations.append({"what": what, "ok": bool(ok), **values})
        return bool(ok)

    def skip(self, reason: str) -> None:
        """A part that cannot run here, and why."""
        self.skipped.append(reason)

    def finish(self, seconds: float) -> dict[str, Any]:
        """The entry, with status pass / fail / skipped."""
        failed = self.error is not None or any(not e["ok"] for e in self.expectations)
        if failed:
            status = "fail"
        elif self.skipped:
            status = "skipped"
        else:
            status = "pass" if self.expectations else "fail"
        self.entry.update(status=status, seconds=round(seconds, 1), expectations=self.expectations)
        if self.skipped:
            self.entry["skipped"] = self.skipped
        if self.measured:
            self.entry["measured"] = self.measured
        if self.error:
            self.entry["error"] = self.error
        return self.entry


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / MiB, 1)


class GpuCheck:
    """Runs the checks against one server and builds the report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.simulated = args.backend == "simulated"
        self.deadline = time.monotonic() + args.budget
        self.workdir = Path(tempfile.mkdtemp(prefix="tfgpu-gpu-check-"))
        self.server = Server(self.workdir, args.backend)
        self.kernels: list[Kernel] = []  # live ones
        self.all_pids: dict[int, str] = {}  # every kernel pid seen -> kernel id, for cleanup
        self.observations: list[dict[str, Any]] = []
        self.gpu_total = 0
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
        if kernel.pid:
            self.all_pids[kernel.pid] = kernel.id
        kernel.probe = kernel.run(PROBE, self.within(30))
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

    def framework(self, check: Check, kernel: Kernel, name: str) -> bool:
        """Whether the kernel's Python has ``name``; a skip with the reason if not."""
        if kernel.probe.get("frameworks", {}).get(name):
            return True
        check.skip(
            f"{name} is not installed in the kernel's Python ({kernel.probe.get('executable')})"
        )
        return False

    def expect_env(self, check: Check, kernel: Kernel, wanted: dict[str, Any]) -> None:
        """The provisioner's variables as the kernel process sees them."""
        env = kernel.probe.get("env", {})
        seen = {name: env.get(name) for name in wanted}
        ok = seen == wanted
        check.expect(
            f"{kernel.notebook}: kernel environment as the policy renders it",
            ok,
            wanted=wanted,
            **({} if ok else {"seen": seen}),
        )

    def host_stand_in(self, check: Check, kernels: list[Kernel], label: str) -> None:
        """Dry run: host memory the simulated backend reports, so attribution still runs."""
        if not self.simulated:
            return
        for kernel in kernels:
            check.measured.setdefault("host_alloc", {})[kernel.notebook] = kernel.run(
                host_alloc_code(HOST_ALLOC), self.within(60)
            )
        self.observe(label, {k: HOST_ALLOC for k in kernels})

    def run_jax(self, check: Check, kernel: Kernel) -> dict[str, Any]:
        """Allocate 1 GiB with JAX in the kernel; expect it on the GPU."""
        out = kernel.run(jax_alloc_code(GiB), self.within(180))
        check.expect(
            f"{kernel.notebook}: JAX runs on the GPU",
            out.get("backend") == "gpu",
            device=out.get("device"),
        )
        return out

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
                    "used_mib": _mib(r.get("used_memory")),
                    "kernel_id": r.get("kernel_id"),
                    "notebook": r.get("notebook"),
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

    # -- the checks --------------------------------------------------------------------------

    def check_jax_default_preallocation(self, c: Check) -> None:
        """(1) A JAX kernel with no policy: NVML shows ~75% of the GPU held (preallocation)."""
        k = self.start_kernel(c, "default.ipynb", None)
        self.expect_env(
            c,
            k,
            {
                "XLA_PYTHON_CLIENT_PREALLOCATE": None,
                "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
                "CUDA_VISIBLE_DEVICES": None,
            },
        )
        if not self.framework(c, k, "jax"):
            return self.host_stand_in(c, [k], "1 default (host stand-in)")
        c.measured["jax"] = self.run_jax(c, k)
        obs = self.observe("1 default", {k: GiB})
        used = obs["kernels"][k.notebook]["nvml_used"]
        fraction = used / self.gpu_total
        low, high = JAX_DEFAULT_RANGE
        c.measured.update(
            nvml_used_mib=_mib(used),
            gpu_total_mib=_mib(self.gpu_total),
            fraction=round(fraction, 4),
        )
        c.expect(
            f"NVML shows {low:.0%}-{high:.0%} of the GPU held by the kernel",
            low <= fraction <= high,
            fraction=round(fraction, 4),
        )

    def check_jax_four_capped_kernels(self, c: Check) -> None:
        """(2) Four JAX kernels capped at 18% of the GPU each run at once within their caps."""
        limit = int(self.gpu_total / MiB * CAP_SHARE)
        fraction = round(min(1.0, limit * MiB / self.gpu_total), 4)
        c.measured.update(
            memory_limit_mb=limit, xla_fraction=fraction, margin_mib=self.args.margin_mib
        )
        kernels = [self.start_kernel(c, f"{x}.ipynb", {"memory_limit_mb": limit}) for x in "abcd"]
        for k in kernels:
            self.expect_env(
                c,
                k,
                {
                    "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction}",
                    "XLA_CLIENT_MEM_FRACTION": None,
                    "XLA_PYTHON_CLIENT_PREALLOCATE": None,
                },
            )
        if not self.framework(c, kernels[0], "jax"):
            return self.host_stand_in(c, kernels, "2 four capped (host stand-in)")
        outcomes = {}
        for k in kernels:
            try:
                outcomes[k.notebook] = self.run_jax(c, k)
            except KernelError as err:
                outcomes[k.notebook] = {"error": str(err)[-700:]}
        c.measured["jax"] = outcomes
        c.expect(
            "each kernel allocated 1 GiB without an error (no OOM)",
            all("error" not in o for o in outcomes.values()),
        )
        obs = self.observe("2 four capped", {k: GiB for k in kernels})
        c.expect("NVML lists all four kernel processes at once", obs["settled"])
        overhead = {}
        for k in kernels:
            used = obs["kernels"][k.notebook]["nvml_used"]
            overhead[k.notebook] = _mib(used - limit * MiB)
            c.expect(
                f"{k.notebook}: NVML used <= cap + margin",
                GiB <= used <= (limit + self.args.margin_mib) * MiB,
                used_mib=_mib(used),
                cap_mib=limit,
            )
        c.measured["overhead_over_cap_mib"] = overhead

    def check_torch_memory_limit(self, c: Check) -> None:
        """(3) A PyTorch kernel capped at 2048 MiB: 1 GiB works, 4 GiB is an OutOfMemoryError."""
        k = self.start_kernel(c, "torch.ipynb", {"memory_limit_mb": TORCH_LIMIT_MB})
        c.expect(
            "TFGPU_POLICY carries memory_limit_mb 2048",
            (k.probe.get("policy") or {}).get("memory_limit_mb") == TORCH_LIMIT_MB,
        )
        if not self.framework(c, k, "torch"):
            return self.host_stand_in(c, [k], "3 torch (host stand-in)")
        out = k.run(TORCH_CODE, self.within(180))
        record = out.pop("record", None) or {}
        c.measured.update(torch=out, bootstrap_record=record)
        c.expect("allocating 1 GiB works", out.get("alloc_1gib") == "ok")
        c.expect(
            "allocating 4 GiB raises torch.cuda.OutOfMemoryError",
            out.get("alloc_4gib") == "OutOfMemoryError",
            message=out.get("oom_message"),
        )
        wanted = TORCH_LIMIT_MB * MiB / out["total_memory"]
        applied = [a for a in record.get("applied", []) if a.get("setting") == "memory_limit_mb"]
        got = (applied[0].get("fractions") or {}).get("0") if applied else None
        c.expect(
            "tfgpu_bootstrap.record() shows the fraction applied",
            got is not None and abs(got - wanted) < 1e-3 and not record.get("pending"),
            fraction=got,
            expected=round(wanted, 4),
        )
        if out.get("fraction_reported") is not None:
            c.expect(
                "torch reports the same per-process fraction",
                abs(out["fraction_reported"] - wanted) < 1e-3,
                fraction=out["fraction_reported"],
            )
        obs = self.observe("3 torch", {k: GiB})
        used = obs["kernels"][k.notebook]["nvml_used"]
        c.expect(
            "NVML used <= 2048 MiB + margin",
            used <= (TORCH_LIMIT_MB + self.args.margin_mib) * MiB,
            used_mib=_mib(used),
        )

    def check_cpu_only_devices_empty(self, c: Check) -> None:
        """(4) devices []: torch and JAX see no GPU, and no GPU lists the kernel."""
        k = self.start_kernel(c, "cpu-only.ipynb", {"devices": []})
        self.expect_env(c, k, {"CUDA_VISIBLE_DEVICES": "-1"})
        out = k.run(CPU_ONLY_CODE, self.within(180))
        c.measured["frameworks"] = out
        if self.framework(c, k, "torch"):
            c.expect("torch.cuda.is_available() is False", out.get("torch_cuda_available") is False)
        if self.framework(c, k, "jax"):
            c.expect(
                "jax.devices() has no GPU",
                not any(d.startswith(("gpu", "cuda")) for d in out.get("jax_devices", [])),
                devices=out.get("jax_devices"),
            )
        if self.simulated:
            c.measured["host_alloc"] = k.run(host_alloc_code(HOST_ALLOC), self.within(60))
        obs = self.observe("4 cpu only", {k: None})
        c.expect(
            "no GPU lists the kernel's process",
            obs["kernels"][k.notebook]["nvml_used"] == 0 and obs["settled"],
        )

    def check_jax_memory_growth(self, c: Check) -> None:
        """(5) memory_growth: JAX does not preallocate; NVML shows far less than 75%."""
        k = self.start_kernel(c, "growth.ipynb", {"memory_growth": True})
        self.expect_env(
            c, k, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        )
        if not self.framework(c, k, "jax"):
            return self.host_stand_in(c, [k], "5 growth (host stand-in)")
        c.measured["jax"] = self.run_jax(c, k)
        obs = self.observe("5 growth", {k: GiB})
        used = obs["kernels"][k.notebook]["nvml_used"]
        fraction = used / self.gpu_total
        c.measured.update(nvml_used_mib=_mib(used), fraction=round(fraction, 4))
        c.expect(
            f"NVML shows under {GROWTH_MAX_FRACTION:.0%} of the GPU (far less than 75%)",
            fraction < GROWTH_MAX_FRACTION,
            fraction=round(fraction, 4),
        )

    def check_attribution(self, c: Check) -> None:
        """(6) Every kernel process a GPU lists has the right kernel_id and notebook in GET gpus."""
        checked = 0
        for obs in self.observations:
            problems, seen = [], []
            for row in obs["rows"]:
                if not (row["ours"] or row["kernel_id"]):
                    continue  # another user's process: shown as "other processes"
                seen.append(f"pid {row['pid']} -> {row['notebook']}")
                if not (
                    row["ours"]
                    and row["kernel_id"] == row["expected_kernel_id"]
                    and row["notebook"] == row["expected_notebook"]
                ):
                    problems.append(row)
            for notebook, kernel in obs["kernels"].items():
                if kernel["on_gpu"] and not kernel["nvml_used"]:
                    problems.append(
                        {"notebook": notebook, "pid": kernel["pid"], "why": "not listed by any GPU"}
                    )
            checked += len(seen)
            c.expect(
                f"{obs['label']}: kernel processes attributed",
                not problems,
                seen=seen,
                **({"problems": problems} if problems else {}),
            )
        foreign = sorted(
            {row["pid"] for obs in self.observations for row in obs["rows"] if not row["ours"]}
        )
        c.measured.update(rows_checked=checked, other_processes=foreign)
        c.expect("at least one kernel process was seen on a GPU", checked > 0)

    def check_kernels_gpu_memory(self, c: Check) -> None:
        """(7) GET kernels shows each kernel's GPU memory, as the GPU's process list does."""
        tolerance = 0.10 if self.simulated else 0.02  # RSS moves between two samples; NVML does not
        checked = 0
        for obs in self.observations:
            problems, seen = [], {}
            for notebook, kernel in obs["kernels"].items():
                checked += 1
                api, nvml = kernel["api_total"], kernel["nvml_used"]
                if kernel["on_gpu"]:
                    ok = (
                        bool(api)
                        and abs(api - nvml) <= max(64 * MiB, tolerance * nvml)
                        and kernel["pid"] in kernel["api_pids"]
                    )
                else:
                    ok = api == 0
                seen[notebook] = {"api_mib": _mib(api), "nvml_mib": _mib(nvml)}
                if not ok or kernel["api_notebook"] != notebook:
                    problems.append(
                        {
                            "notebook": notebook,
                            "api_notebook": kernel["api_notebook"],
                            "api_pids": kernel["api_pids"],
                            "pid": kernel["pid"],
                            "on_gpu": kernel["on_gpu"],
                        }
                    )
            c.expect(
                f"{obs['label']}: gpu_memory per kernel",
                not problems,
                seen=seen,
                **({"problems": problems} if problems else {}),
            )
        c.expect("at least one kernel was checked", checked > 0)

    # In this order: (1) frees the GPU before (2) needs 72% of it. Each docstring is the "what".
    CHECKS = (
        "check_jax_default_preallocation",
        "check_jax_four_capped_kernels",
        "check_torch_memory_limit",
        "check_cpu_only_devices_empty",
        "check_jax_memory_growth",
        "check_attribution",
        "check_kernels_gpu_memory",
    )

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Start the server, run every check, stop everything, return the report."""
        report = self.report
        report["checks"] = []
        errors: list[str] = []
        t0 = time.monotonic()
        try:
            self.server.start()
            status = self.server.wait_ready(self.within(90))
            status.pop("sampler", None)  # its first round only; sampler_after says more
            snapshot = self.wait_for_gpus()
            config = self.server.api("GET", "tfgpu/api/config")
            report["server"] = {"status": status, "provisioner": config.get("provisioner")}
            report["baseline"] = {
                "gpus": [
                    {
                        "index": g["index"],
                        "name": g.get("name"),
                        "uuid": g.get("uuid"),
                        "used_mib": _mib(g["memory"]["used"]),
                        "total_mib": _mib(g["memory"]["total"]),
                        "processes": len(g.get("processes") or []),
                    }
                    for g in snapshot["gpus"]
                ],
            }
            self.gpu_total = snapshot["gpus"][0]["memory"]["total"]
            for number, method in enumerate(self.CHECKS, 1):
                self.run_check(number, getattr(self, method))
            report["server"]["sampler_after"] = self.server.api("GET", "tfgpu/api/status").get(
                "sampler"
            )
        except (Exception, Interrupted) as err:  # noqa: BLE001 - the report must still be printed
            errors.append(f"{type(err).__name__}: {err}")
        finally:
            report["cleanup"] = self.cleanup()
        done = {entry["id"] for entry in report["checks"]}
        for number, method in enumerate(self.CHECKS, 1):
            if number not in done:
                entry = Check(number, getattr(self, method)).finish(0)
                entry["error"] = "not run: " + (errors[0] if errors else "unknown")
                report["checks"].append(entry)
        counts = {
            s: sum(1 for e in report["checks"] if e["status"] == s)
            for s in ("pass", "fail", "skipped")
        }
        report["summary"] = counts
        if errors or counts["fail"]:
            report["result"] = "fail"
        elif counts["skipped"] and not self.simulated:
            report["result"] = "incomplete"
        else:
            report["result"] = "pass"
        report["duration_s"] = round(time.monotonic() - t0, 1)
        if errors:
            report["errors"] = errors
        if errors or counts["fail"]:
            report["server_log_tail"] = self.server_log_tail
        # Bulky parts first, verdict last: a terminal or a log tail shows the verdict.
        order = (
            "check",
            "started",
            "backend",
            "dry_run",
            "server_log_tail",
            "machine",
            "server",
            "kernel_python",
            "baseline",
            "checks",
            "cleanup",
            "duration_s",
            "errors",
            "summary",
            "result",
        )
        return {key: report[key] for key in order if key in report}

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

    def run_check(self, number: int, method: Any) -> None:
        """Run one check into the report; its kernels are stopped afterwards whatever happened."""
        check = Check(number, method)
        started = time.monotonic()
        before = list(self.kernels)
        try:
            method(check)
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
        outcome: dict[str, Any] = {"server": self.server.stop()}
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
        if out and self.server.log_path.exists():
            log = self.server.log_path.read_text(errors="replace").replace(
                self.server.token, "<token>"
            )
            Path(out, "gpu-check-server.log").write_text(log)
        self.server_log_tail = self.server.log_tail(25)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return outcome


def machine_info(context: str | None) -> dict[str, Any]:
    """Python and platform; nvidia-smi's and the wheel install's records from gpu-check.sh."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
    }
    if not context:
        return info
    folder = Path(context)

    def read(name: str) -> str | None:
        try:
            return (folder / name).read_text(errors="replace").strip()
        except OSError:
            return None

    listing = read("nvidia-smi-L.txt")
    if listing is not None:
        info["nvidia_smi_L"] = listing.splitlines()
    query = read("nvidia-smi-query.csv")
    if query:
        fields = ("name", "driver_version", "memory_total", "cuda_version")
        info["gpus"] = [
            dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in query.splitlines()
        ]
        info["driver"] = info["gpus"][0].get("driver_version")
    if read("nvidia-smi-error.txt"):
        info["nvidia_smi_error"] = read("nvidia-smi-error.txt")
    plan = read("wheel-plan.json")
    if plan:
        decisions = json.loads(plan)
        info["wheels"] = {
            "installed": " ".join(
                d["wheel"].split("-")[0] for d in decisions if d["action"].startswith("install")
            ),
            "from_image": {
                d["wheel"].split("-")[0]: d["image_version"]
                for d in decisions
                if d["action"].startswith("skip")
            },
            "shadowed": [d for d in decisions if d["action"].startswith("install (")],
        }
    rc = read("install-rc")
    if rc not in (None, "0"):
        info["install_rc"] = rc
        info["install_log_tail"] = (read("install.log") or "").splitlines()[-20:]
    return info


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; plan wheels or run the check and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=("nvml", "simulated"),
        default="nvml",
        help="nvml on the GPU machine; simulated for the dry run",
    )
    parser.add_argument("--budget", type=float, default=240, help="seconds for the whole check")
    parser.add_argument(
        "--margin-mib",
        type=int,
        default=DEFAULT_MARGIN_MIB,
        help="MiB NVML may show beyond a kernel's cap (CUDA context, libraries)",
    )
    parser.add_argument(
        "--context", help="folder where gpu-check.sh left nvidia-smi's and pip's records"
    )
    parser.add_argument(
        "--plan-wheels", metavar="DIR", help="print the wheels in DIR to install, then exit"
    )
    parser.add_argument(
        "--plan-out", metavar="FILE", help="with --plan-wheels: write the decisions here"
    )
    args = parser.parse_args(argv)
    if args.plan_wheels:
        install, decisions = plan_wheels(args.plan_wheels)
        if args.plan_out:
            Path(args.plan_out).write_text(json.dumps(decisions, indent=1))
        print("\n".join(install))
        return 0

    def interrupted(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupted)
    report = GpuCheck(args).run()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-check.json").write_text(
            json.dumps(report, indent=1, default=repr) + "\n"
        )
    # Compact on stdout (one line): remote runners often keep only the end of the output.
    print(json.dumps(report, separators=(",", ":"), default=repr))
    return 0 if report["result"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())

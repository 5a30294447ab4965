"""The storm: baseline, kernels started all at once, recovery and an after-window against one
server, with the counters read at each phase boundary; the raw timeline for the figures."""

from __future__ import annotations

import hashlib
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from _harness import FakeServer, call, execute, start_session
from _streams import StreamClients

from .poller import Poller

GIB = 2**30
KERNEL_BYTES = 2 * GIB  # what each kernel's GPU process holds on its slice


def _checkout_state(package: str | None) -> dict[str, Any]:
    """Commit of the checkout the server imported, whether its package differs from that
    commit, and a digest of its sampler (to tell whether it changed during the run)."""
    if not package:
        return {}
    root = Path(package).parent
    sampling = Path(package) / "server" / "sampling"
    digest = hashlib.sha256()
    for source in sorted(sampling.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", Path(package).name)
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "package_changed_from_commit": None if changed is None else bool(changed),
        "sampler_digest": digest.hexdigest()[:16],
    }


def _counters(server: FakeServer) -> dict[str, Any]:
    """Wall clock, the fake's driver time and the server's CPU seconds, read together."""
    nvml = server.nvml()
    cpu = psutil.Process(server.pid).cpu_times()
    host = psutil.cpu_times()
    idle = host.idle + getattr(host, "iowait", 0.0)
    # This run: this process and its descendants (server, kernels, poller, stream clients).
    run_cpu = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            run_cpu += times.user + times.system
        except psutil.Error:
            continue
    return {
        "t": time.time(), "call_time": nvml["call_time"], "cpu": cpu.user + cpu.system,
        "host_busy": sum(host) - idle, "host_total": sum(host), "run_cpu": run_cpu,
    }  # fmt: skip


def _start_kernel(server: FakeServer, i: int, p: dict[str, Any], t0: float) -> dict[str, Any]:
    """One kernel of the storm: session, PID, GPU process on a slice, first execution."""
    rec: dict[str, Any] = {"i": i}
    try:
        session = start_session(server, f"scale-{i:03d}.ipynb", timeout=180)
        rec["session_id"], rec["kernel_id"] = session["id"], session["kernel"]["id"]
        rec["session_s"] = round(time.time() - t0, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not rec.get("pid"):
            status, row, _ = call(server, "GET", f"tfgpu/api/kernels/{rec['kernel_id']}")
            rec["pid"] = (row or {}).get("pid") if status == 200 else None
            if not rec["pid"]:
                time.sleep(0.2)
        if not rec.get("pid"):
            raise RuntimeError("the kernel's PID never showed in GET kernels/{id}")
        rec["created"] = psutil.Process(rec["pid"]).create_time()  # to end only this process
        gpu = i % p["gpus"]
        slot = (i // p["gpus"]) % p["mig"] if p["mig"] else None
        spec = {"pid": rec["pid"], "gpu": gpu, "mig": slot, "used_memory": KERNEL_BYTES}
        status, _, _ = call(server, "POST", "bench/processes", {"add": [spec]})
        if status != 200:
            raise RuntimeError(f"POST bench/processes: {status}")
        rec["added_at"] = time.time()
        rec["gpu"], rec["mig"] = gpu, slot
        # Which kernel bootstrap the kernel runs: that of the checkout the server imported.
        code = "import sys; print(getattr(sys.modules.get('tfgpu_bootstrap'), '__file__', None))"
        rec["bootstrap"] = execute(server, rec["kernel_id"], code, timeout=180).strip()
        rec["ready_at"] = time.time()
    except Exception as err:  # noqa: BLE001 - counted; the storm goes on
        rec["error"] = f"{type(err).__name__}: {err}"
    return rec


def _stop_kernels(server: FakeServer, kernels: list[dict[str, Any]]) -> dict[str, Any]:
    """Delete every session of the storm, 10 at a time, each bounded."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(
            lambda k: call(server, "DELETE", f"api/sessions/{k['session_id']}", timeout=60)[0],
            [k for k in kernels if k.get("session_id")],
        ))  # fmt: skip
    return {
        "deleted": sum(1 for c in codes if c == 204),
        "answers": {str(c): codes.count(c) for c in set(codes)},
        "seconds": round(time.monotonic() - started, 1),
    }


def _kill_leftovers(kernels: list[dict[str, Any]]) -> int:
    """SIGKILL the kernel processes of this run still alive after the server stopped."""
    killed = 0
    for k in kernels:
        if not k.get("created"):
            continue
        try:
            proc = psutil.Process(k["pid"])
            if abs(proc.create_time() - k["created"]) < 0.01:
                proc.kill()
                killed += 1
        except psutil.Error:
            continue
    return killed


def run(p: dict[str, Any], checkout: str | None, workdir: Path) -> dict[str, Any]:
    """Baseline, storm, recovery and an after-window against one server; the raw timeline."""
    launcher = [
        "--gpus", str(p["gpus"]), "--mig", str(p["mig"]), "--foreign-processes", str(p["foreign"]),
    ]  # fmt: skip
    if checkout:
        launcher += ["--checkout", checkout]
    out: dict[str, Any] = {"marks": {}, "counters": {}}
    kernels: list[dict[str, Any]] = []
    with FakeServer(launcher=launcher, max_seconds=1200) as server:
        out["package"] = server.info.get("package")
        out["checkout_at_start"] = _checkout_state(out["package"])
        # The baseline starts once the first process-list round has listed the foreign processes.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            groups = server.get("tfgpu/api/status")["sampler"]["groups"]
            if groups["processes"]["calls"] >= 1:
                break
            time.sleep(0.5)
        observer = p["clients"] >= 1
        helper_clients = max(0, p["clients"] - 1)
        max_run = p["baseline_s"] + 400 + p["recovery_max_s"] + p["after_s"]
        streams = (
            StreamClients(server, helper_clients, max_seconds=max_run) if helper_clients else None
        )
        poller = Poller(server, workdir / "poll.jsonl", observe=observer, max_seconds=max_run)
        if streams is not None:
            streams.__enter__()
        try:
            with poller:
                out["marks"]["baseline"] = time.time()
                out["counters"]["baseline"] = _counters(server)
                time.sleep(p["baseline_s"])
                out["rss_before_mib"] = round(
                    psutil.Process(server.pid).memory_info().rss / 2**20, 1
                )
                out["available_memory_before_gib"] = round(
                    psutil.virtual_memory().available / GIB, 2
                )
                t0 = time.time()
                out["marks"]["storm_start"] = t0
                out["counters"]["storm_start"] = _counters(server)
                with ThreadPoolExecutor(max_workers=p["kernels"]) as pool:
                    futures = [
                        pool.submit(_start_kernel, server, i, p, t0) for i in range(p["kernels"])
                    ]
                    low_memory = psutil.virtual_memory().available
                    # Counters every half second: the storm's end is known only afterwards.
                    series = []
                    while not all(f.done() for f in futures):
                        low_memory = min(low_memory, psutil.virtual_memory().available)
                        series.append(_counters(server))
                        time.sleep(0.5)
                    series.append(_counters(server))
                    kernels = [f.result() for f in futures]
                out["available_memory_min_gib"] = round(low_memory / GIB, 2)
                ready = [k["ready_at"] for k in kernels if "ready_at" in k]
                storm_end = max(ready) if ready else time.time()
                out["marks"]["storm_end"] = storm_end
                out["counters"]["storm_end"] = next(c for c in series if c["t"] >= storm_end)
                out["rss_storm_end_mib"] = round(
                    psutil.Process(server.pid).memory_info().rss / 2**20, 1
                )
                ids = {k["kernel_id"] for k in kernels if "ready_at" in k}
                settled = _wait_settled(poller, p, storm_end, ids)
                out["settle_reason"] = settled
                out["marks"]["settled"] = time.time()
                out["counters"]["settled"] = _counters(server)
                time.sleep(p["after_s"])
                out["marks"]["end"] = time.time()
                out["counters"]["end"] = _counters(server)
                out["rss_end_mib"] = round(psutil.Process(server.pid).memory_info().rss / 2**20, 1)
                out["sampler_at_end"] = server.get("tfgpu/api/status")["sampler"]
        finally:
            if streams is not None:
                streams.__exit__(None, None, None)
                out["stream_clients"] = streams.summary
            out["stop"] = _stop_kernels(server, kernels)
        out["records"] = poller.records
        out["checkout_at_end"] = _checkout_state(out["package"])
    out["leftover_kernels_killed"] = _kill_leftovers(kernels)
    out["kernels"] = kernels
    return out


def _wait_settled(poller: Poller, p: dict[str, Any], storm_end: float, ids: set[str]) -> str:
    """Wait until the fast interval has stayed at its configured value for ``stable_s`` after the
    storm and every kernel shows GPU memory, or ``recovery_max_s`` passed; the reason."""
    deadline = storm_end + p["recovery_max_s"]
    last_stretched = storm_end
    attributed = False
    while time.time() < deadline:
        for rec in poller.read():
            if rec["k"] == "sampler" and rec.get("fast") is not None:
                if rec["fast"] > rec["fast_cfg"] * 1.01:
                    last_stretched = max(last_stretched, rec["t"])
            elif rec["k"] == "kernels" and "held" in rec:
                attributed = attributed or ids <= set(rec["held"])
        if attributed and time.time() - last_stretched >= p["stable_s"]:
            return "recovered and attributed"
        time.sleep(0.5)
    return f"waited the maximum ({p['recovery_max_s']:g} s after the storm)"

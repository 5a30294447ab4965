"""What hard caps need on this machine, read cheaply before anything starts: the MPS binaries,
the cgroup version and its dmem controller, the driver, root, each GPU's compute mode and MIG
mode, and nvidia-ml-py's memory-limit calls.

Stdlib, ``nvidia-smi`` and an import of ``pynvml`` (no NVML call): a few seconds at most, no
server, no kernel. ``scripts/gpu_check.py --probe`` prints it alone; every run records it first,
under ``hard_caps.probe``. It only reads: the server's own verdict on each mode (GET status'
``hard_caps``) is what the hard-caps checks go by.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

CGROUP_MOUNT = Path("/sys/fs/cgroup")
MPS_BINARIES = ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server")
# One nvidia-smi query per field: an older nvidia-smi refuses a whole query for one field it
# does not know.
GPU_FIELDS = ("index", "uuid", "name", "memory.total", "driver_version", "compute_mode",
              "mig.mode.current", "compute_cap")  # fmt: skip
NVML_LIMITS_BRANCH = 615  # NVML's memory limits came with this driver branch


def _run(argv: list[str], timeout: float = 15) -> tuple[int | None, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{type(err).__name__}: {err}"
    return done.returncode, (done.stdout if done.returncode == 0 else done.stderr).strip()


def gpus() -> dict[str, Any]:
    """Each GPU's fields as nvidia-smi gives them (a field it cannot give: its error)."""
    if not shutil.which("nvidia-smi"):
        return {"error": "nvidia-smi not found"}
    columns: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for name in GPU_FIELDS:
        rc, text = _run(["nvidia-smi", f"--query-gpu={name}", "--format=csv,noheader"])
        if rc == 0:
            columns[name] = [line.strip() for line in text.splitlines()]
        else:
            errors[name] = text[-300:]
    count = max((len(v) for v in columns.values()), default=0)
    rows = [{name: values[i] for name, values in columns.items() if i < len(values)}
            for i in range(count)]  # fmt: skip
    return {"gpus": rows, **({"errors": errors} if errors else {})}


def cgroup() -> dict[str, Any]:
    """cgroup v2 or v1 at /sys/fs/cgroup, this process's own cgroup, its controllers (dmem?)."""
    v2 = (CGROUP_MOUNT / "cgroup.controllers").is_file()
    own = None
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip() or "/"
    except OSError:
        pass
    info: dict[str, Any] = {"version": 2 if v2 else (1 if (CGROUP_MOUNT / "memory").is_dir() else None),
                            "own": own}  # fmt: skip
    if v2:
        where = CGROUP_MOUNT / (own or "/").lstrip("/")
        for name in ("cgroup.controllers", "cgroup.subtree_control"):
            try:
                info[name] = (where / name).read_text().split()
            except OSError as err:
                info[name] = f"unreadable: {err.strerror}"
        root = (CGROUP_MOUNT / "cgroup.controllers").read_text().split()
        info["root_controllers"] = root
        info["dmem"] = "dmem" in (info["cgroup.controllers"] or [])
        try:  # only its own process: a cgroup v2 parent cannot enable controllers otherwise
            info["own_procs"] = len((where / "cgroup.procs").read_text().split())
        except OSError:
            info["own_procs"] = None
    return info


def nvml_bindings() -> dict[str, Any]:
    """nvidia-ml-py's version and whether it has the memory-limit calls (imported, not called)."""
    try:
        version = metadata.version("nvidia-ml-py")
    except metadata.PackageNotFoundError:
        version = None
    try:
        pynvml = importlib.import_module("pynvml")
    except Exception as err:  # noqa: BLE001 - recorded
        return {"nvidia_ml_py": version, "import_error": f"{type(err).__name__}: {err}"}
    return {
        "nvidia_ml_py": version,
        "set_memory_limits": hasattr(pynvml, "nvmlDeviceSetMemoryLimits_v1"),
        "mps_process_list": hasattr(pynvml, "nvmlDeviceGetMPSComputeRunningProcesses_v3"),
    }


def mps_processes() -> list[dict[str, Any]]:
    """Running MPS daemons and servers on this machine (any user), by PID."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm.startswith("nvidia-cuda-mps"):
                found.append({"pid": int(entry.name), "name": comm, "uid": entry.stat().st_uid})
        except OSError:
            continue
    return found


def lacks(info: dict[str, Any]) -> dict[str, list[str]]:
    """What each mode lacks by these readings, in words (the server's verdict decides)."""
    rows = info["gpu"].get("gpus") or []
    mps, nvml = [], []
    if not rows:
        mps.append(f"nvidia-smi lists no GPU ({info['gpu'].get('error', 'none found')})")
    if not info["mps"]["nvidia-cuda-mps-control"]:
        mps.append("nvidia-cuda-mps-control is not on PATH")
    for row in rows:
        what = f"GPU {row.get('index')} ({row.get('name')})"
        if row.get("compute_mode", "").lower().startswith("prohibited"):
            mps.append(f"{what} is in compute mode Prohibited")
        if row.get("mig.mode.current", "").lower() == "enabled":
            mps.append(f"{what} has MIG enabled")
            nvml.append(f"{what} has MIG enabled")
        cap = row.get("compute_cap", "")
        if cap[:1].isdigit() and int(cap.split(".")[0]) < 7:
            mps.append(f"{what} is older than Volta ({cap})")
    driver = rows[0].get("driver_version", "") if rows else ""
    if not driver[:1].isdigit():
        nvml.append("the driver's version is unknown")
    elif int(driver.split(".")[0]) < NVML_LIMITS_BRANCH:
        nvml.append(f"driver {driver} is older than R{NVML_LIMITS_BRANCH}")
    if not info["nvml"].get("set_memory_limits"):
        nvml.append("nvidia-ml-py has no nvmlDeviceSetMemoryLimits_v1 (13.615.71 or newer has)")
    cg = info["cgroup"]
    if cg.get("version") != 2:
        nvml.append(f"no cgroup v2 at {CGROUP_MOUNT} (version {cg.get('version')})")
    elif not cg.get("dmem"):
        nvml.append(f"no dmem controller for this process's cgroup (Linux {platform.release()})")
    if info["euid"] != 0:
        nvml.append(f"not root (uid {info['euid']})")
    return {"mps": mps, "nvml": nvml}


def probe_host() -> dict[str, Any]:
    """The readings, and what each mode lacks by them."""
    info: dict[str, Any] = {
        "linux": platform.release(),
        "euid": os.geteuid(),
        "mps": {name: shutil.which(name) for name in MPS_BINARIES},
        "mps_pipe_directory_env": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
        "mps_processes": mps_processes(),
        "gpu": gpus(),
        "cgroup": cgroup(),
        "nvml": nvml_bindings(),
    }
    info["lacks"] = lacks(info)
    return info

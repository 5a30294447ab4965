"""Kernel start-to-ready and shutdown with TFGPU.hard_caps off, mps and nvml (no GPU: fakes).

    python benchmarks/bench_hard_caps.py [--runs 12] [--quick] [--modes off,mps,nvml]

Each mode's mechanism runs as in a server: ``HardCaps`` picks it from what it finds on the
machine and starts it, the kernels' launches go through it, and the tfgpu provisioner starts a
real ipykernel with what it prepared. The machine is made of the test suite's fakes: two A100s
of ``tests/fake_pynvml.py`` on driver 615 with the R615 memory-limit calls, the fake
``nvidia-cuda-mps-control`` of ``tests/fake_mps_bin/`` first on PATH (a real daemon process
answering the real command protocol), and a temporary cgroup v2 tree with dmem
(``tests/fake_cgroup_tree.py``) as /sys/fs/cgroup, the caller taken for root. So what is timed
is the extension's own part: mps adds the kernel's MPS variables (and, at shutdown, asks the
daemon which processes are its clients); nvml makes a leaf cgroup, sets a limit per GPU through
the fake NVML, starts the kernel through the ``cgexec`` launcher (one more Python process) and
clears all of it at shutdown. What the driver adds at a kernel's first CUDA call under MPS or
NVML limits is not here: the GPU check measures that (checks 9, 14 and 20).

Runs alternate between the modes so machine noise hits each alike, after one warm-up start per
mode. Prints the medians per mode and their ratios to off as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_tfgpu.gpu.backend import DeviceInfo  # noqa: E402
from jupyter_tfgpu.policy import AdminPolicy, PolicyService, PolicyStore  # noqa: E402
from jupyter_tfgpu.server.hardcaps import host as host_module  # noqa: E402
from jupyter_tfgpu.server.hardcaps import nvml_limits  # noqa: E402
from jupyter_tfgpu.server.hardcaps.host import Probe  # noqa: E402
from jupyter_tfgpu.server.hardcaps.service import HardCaps  # noqa: E402
from jupyter_tfgpu.server.kernels.launches import KernelLaunches  # noqa: E402
from jupyter_tfgpu.server.kernels.provisioner import (  # noqa: E402
    PROVISIONER_NAME,
    ProvisionerContext,
    TFGPUProvisioner,
)
from tests.fake_cgroup_tree import FakeCgroupTree  # noqa: E402
from tests.fake_mps import BIN as FAKE_MPS_BIN  # noqa: E402
from tests.fake_pynvml import FakeGpu, FakeNvml  # noqa: E402

MODES = ("off", "mps", "nvml")
SERVER_CGROUP = "/system.slice/jupyter.service"
CAP_MB = 4096  # the notebook's memory_limit_mb
ADMIN_CAP_MB = 16384  # max_memory_mb: the MPS daemon's default limit


def fake_machine(folder: Path) -> FakeNvml:
    """Two A100s on driver 615 as ``pynvml``, the fake MPS daemon on PATH, a cgroup v2 tree
    with dmem as /sys/fs/cgroup, and root: what every mode needs."""
    fake = FakeNvml([FakeGpu(), FakeGpu()], driver_version="615.71.09", privileged=True)
    sys.modules["pynvml"] = fake.module
    tree = FakeCgroupTree(folder / "sys")
    own = folder / "proc-self-cgroup"
    own.write_text(f"0::{SERVER_CGROUP}\n")
    host_module.CGROUP_ROOT = tree.mount
    host_module.PROC_SELF_CGROUP = own
    host_module._euid = lambda: 0
    nvml_limits.cgroup_files = lambda: tree.files
    fake.cgroup_of = tree.cgroup_of
    os.environ["PATH"] = f"{FAKE_MPS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return fake


def start_mode(mode: str, service: PolicyService, folder: Path) -> ProvisionerContext:
    """The mode's mechanism started as a server starts it, and the provisioner's context."""
    hard_caps = HardCaps(mode, runtime_dir=folder / f"hc-{mode}", admin=lambda: service.admin,
                         probe=Probe(environ=dict(os.environ)))  # fmt: skip
    hard_caps.start()
    if hard_caps.mode.name != mode:
        raise SystemExit(f"{mode} did not start: {hard_caps.reason}")
    return ProvisionerContext(KernelLaunches(service, hard_caps=hard_caps))


async def start_stop(context: ProvisionerContext, notebook: Path) -> tuple[float, float, str]:
    """Seconds from start_kernel() to a kernel_info reply, and of shutdown_kernel(); its id."""
    TFGPUProvisioner.serve(context)
    KernelProvisionerFactory.instance().default_provisioner_name = PROVISIONER_NAME
    km = AsyncKernelManager(kernel_name="python3")
    began = time.perf_counter()
    await km.start_kernel(env={**os.environ, "JPY_SESSION_NAME": str(notebook)})
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        started = time.perf_counter() - began
    finally:
        client.stop_channels()
    began = time.perf_counter()
    await km.shutdown_kernel()
    return started, time.perf_counter() - began, km.kernel_id


async def main() -> None:
    """Alternate the modes' starts; print the medians per mode and the ratios to off."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of off,mps,nvml")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fake = fake_machine(folder)
        devices = [
            DeviceInfo(i, gpu.uuid, gpu.name, gpu.memory_total) for i, gpu in enumerate(fake.gpus)
        ]
        service = PolicyService(
            PolicyStore(folder / "policies.json"),
            AdminPolicy(max_memory_mb=ADMIN_CAP_MB),
            devices=lambda: devices,
            root_dir=str(folder),
        )
        service.set("nb.ipynb", {"memory_limit_mb": CAP_MB, "devices": [0]})
        notebook = folder / "nb.ipynb"
        contexts = {mode: start_mode(mode, service, folder) for mode in modes}
        held: dict[str, list[str | None]] = {}  # the mechanisms the last kernel's launch names
        try:
            for mode in modes:  # warm-up: file caches, the fake daemon's first answers
                await start_stop(contexts[mode], notebook)
            times: dict[str, dict[str, list[float]]] = {m: {"start": [], "stop": []} for m in modes}
            for _ in range(runs):
                for mode in modes:
                    started, stopped, kernel_id = await start_stop(contexts[mode], notebook)
                    times[mode]["start"].append(started)
                    times[mode]["stop"].append(stopped)
                    launch = contexts[mode].launches.of(kernel_id)
                    held[mode] = sorted({g.mechanism for g in launch.enforcement.gpus})
        finally:
            for context in contexts.values():
                context.launches.hard_caps.stop()
    medians = {
        mode: {key: round(statistics.median(values), 4) for key, values in times[mode].items()}
        for mode in modes
    }
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "runs_each": runs,
        "held_by": held,
        "nvml_limit_calls": {
            name: fake.calls[name]
            for name in ("nvmlDeviceSetMemoryLimits_v1", "nvmlDeviceGetMemoryLimits_v1")
        },
        "median_s": medians,
    }
    if "off" in medians:
        result["ratio_to_off"] = {
            mode: {key: round(value / medians["off"][key], 3) for key, value in row.items()}
            for mode, row in medians.items()
            if mode != "off"
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())

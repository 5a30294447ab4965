"""Kernel start-to-ready with the tfgpu provisioner vs jupyter_client's stock LocalProvisioner.

    python benchmarks/bench_provisioner.py [--runs 12] [--quick]

Both start the same ipykernel; the tfgpu one also renders a policy (memory growth, a limit,
one simulated GPU) into the environment and puts the bootstrap on PYTHONPATH. Runs alternate
between the two so machine noise hits both alike. Target: median ratio <= 1.05.
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

from jupyter_tfgpu.gpu.simulated import expand_gpu_list  # noqa: E402
from jupyter_tfgpu.policy import AdminPolicy, PolicyService, PolicyStore  # noqa: E402
from jupyter_tfgpu.server.kernels.launches import KernelLaunches  # noqa: E402
from jupyter_tfgpu.server.kernels.provisioner import (  # noqa: E402
    PROVISIONER_NAME,
    ProvisionerContext,
    TFGPUProvisioner,
)


async def start_once(provisioner: str, notebook: Path) -> float:
    """Seconds from start_kernel() to a kernel_info reply."""
    KernelProvisionerFactory.instance().default_provisioner_name = provisioner
    km = AsyncKernelManager(kernel_name="python3")
    began = time.perf_counter()
    await km.start_kernel(env={**os.environ, "JPY_SESSION_NAME": str(notebook)})
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        return time.perf_counter() - began
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)


async def main() -> None:
    """Alternate starts and print the medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        notebook = root / "nb.ipynb"
        devices = expand_gpu_list([{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 2}])
        service = PolicyService(
            PolicyStore(root / "policies.json"),
            AdminPolicy(),
            devices=lambda: devices,
            root_dir=str(root),
        )
        service.set("nb.ipynb", {"memory_growth": True, "memory_limit_mb": 4096, "devices": [0]})
        TFGPUProvisioner.serve(ProvisionerContext(KernelLaunches(service)))
        times: dict[str, list[float]] = {"local-provisioner": [], PROVISIONER_NAME: []}
        await start_once("local-provisioner", notebook)  # warm the file cache
        for _ in range(runs):
            for name in times:
                times[name].append(await start_once(name, notebook))
    stock = statistics.median(times["local-provisioner"])
    ours = statistics.median(times[PROVISIONER_NAME])
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "runs_each": runs,
        "local_provisioner_median_s": round(stock, 4),
        "tfgpu_provisioner_median_s": round(ours, 4),
        "ratio": round(ours / stock, 4),
        "target_ratio": 1.05,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())

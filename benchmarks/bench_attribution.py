"""Attribution cost: GPU processes -> kernels, for 50 kernels and 200 GPU processes.

    python benchmarks/bench_attribution.py [--kernels 50] [--per-kernel 4] [--rounds 50]

Starts real processes: 50 "kernels" (sleeping Python processes) with 3 children each, and lists
every kernel and child as a GPU process (200 in all) on 8 GPUs in a snapshot. Times
``Attribution.annotate`` on a cold cache (right after the kernels changed) and warm (every
later sample). Target: under 5 ms per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_tfgpu.gpu.readings import GpuReading  # noqa: E402
from jupyter_tfgpu.server.kernels.attribution import Attribution, KernelProcess  # noqa: E402

CHILD = "import subprocess, sys, time\n" \
    "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']) for _ in range({n})]\n" \
    "print('ready', flush=True)\n" \
    "time.sleep(600)\n"


def main() -> None:
    """Spawn the process trees, time annotate, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kernels", type=int, default=50)
    parser.add_argument("--per-kernel", type=int, default=4, help="GPU processes per kernel")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    kernels = []
    try:
        for _ in range(args.kernels):
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD.format(n=args.per_kernel - 1)],
                stdout=subprocess.PIPE,
                text=True,
            )
            kernels.append(proc)
        for proc in kernels:
            proc.stdout.readline()
        registry = [
            KernelProcess(f"kernel-{n}", p.pid, psutil.Process(p.pid).create_time(), f"nb{n}.ipynb")
            for n, p in enumerate(kernels)
        ]
        pids = []
        for p in kernels:
            pids.append(p.pid)
            pids.extend(c.pid for c in psutil.Process(p.pid).children())
        gpus = [
            {"index": i, "uuid": f"GPU-{i}", "processes": [], "mig": None} for i in range(8)
        ]
        for n, pid in enumerate(pids):
            gpus[n % 8]["processes"].append({"pid": pid, "used_memory": 2**30})

        readings = tuple(GpuReading.from_json(g) for g in gpus)

        def snapshot():
            return readings

        cold, warm = [], []
        for _ in range(args.rounds):
            attribution = Attribution()
            attribution.set_kernels(registry)
            data = snapshot()
            began = time.perf_counter()
            data = attribution.annotate(data)
            cold.append(time.perf_counter() - began)
            data = snapshot()
            began = time.perf_counter()
            data = attribution.annotate(data)
            warm.append(time.perf_counter() - began)
        matched = sum(1 for g in data for p in g.processes if p.kernel_id)
        print(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d", time.gmtime()),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "kernels": args.kernels,
                    "gpu_processes": len(pids),
                    "attributed": matched,
                    "cold_ms_median": round(statistics.median(cold) * 1000, 2),
                    "cold_ms_max": round(max(cold) * 1000, 2),
                    "warm_ms_median": round(statistics.median(warm) * 1000, 2),
                    "warm_ms_max": round(max(warm) * 1000, 2),
                    "target_ms": 5,
                },
                indent=1,
            )
        )
    finally:
        for proc in kernels:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()

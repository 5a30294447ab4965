"""Benchmark jupyter_tfgpu.server.sampling.history.History: memory for 8 GPUs x 1 hour at 1 s, and since() time.

Fills a History of capacity 3600 for 8 GPUs completely, measures it with tracemalloc and
``History.nbytes()``, fills it to twice its capacity to show it stays bounded, and times
``since()`` over all 3600 samples (plus the ``json.dumps`` that GET gpus/history does with it).
Prints one JSON document, then a markdown table. ``--quick`` does fewer timing repeats.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine  # noqa: E402

from jupyter_tfgpu.gpu.readings import GpuReading  # noqa: E402
from jupyter_tfgpu.server.sampling.history import History  # noqa: E402

GPUS = 8
CAPACITY = 3600  # 1 hour at sample_interval = 1 s
TARGET_BYTES = 10 * 2**20


def gpu_rows(step: int) -> list[GpuReading]:
    """One snapshot's GPU readings, as the sampler's (only the fields History reads vary)."""
    return [
        GpuReading.from_json({
            "index": i,
            "uuid": f"GPU-{i}",
            "utilization": {"gpu": (step + 7 * i) % 101, "memory": (step + 3 * i) % 101},
            "memory": {"total": 80 * 2**30, "used": (10 + i) * 2**30 + step, "free": None},
            "temperature": 40 + (step + i) % 30,
            "power": {"draw": 100.0 + (step % 200), "limit": 400.0},
        })
        for i in range(GPUS)
    ]


def fill(history: History, start: int, count: int, t0: float) -> float:
    """Append ``count`` samples, one second apart; returns seconds per append."""
    rows = [gpu_rows(s) for s in range(start, start + min(count, 64))]
    started = time.perf_counter()
    for step in range(start, start + count):
        history.append(t0 + step, rows[(step - start) % len(rows)])
    return (time.perf_counter() - started) / count


def timed(fn, repeats: int) -> dict[str, float]:
    """min and median milliseconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"min_ms": round(min(times) * 1000, 2), "median_ms": round(statistics.median(times) * 1000, 2)}


def main() -> int:
    """Measure memory and since() time; print JSON then markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats (smoke run)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 20
    t0 = time.time() - 2 * CAPACITY

    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    history = History(CAPACITY, GPUS)
    empty = tracemalloc.get_traced_memory()[0] - base
    append_s = fill(history, 0, CAPACITY, t0)
    gc.collect()
    full = tracemalloc.get_traced_memory()[0] - base
    nbytes_full = history.nbytes()
    fill(history, CAPACITY, CAPACITY, t0)  # twice the capacity in all
    gc.collect()
    double = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.reset_peak()
    before_since = tracemalloc.get_traced_memory()[0]
    data = history.since(0)
    since_peak = tracemalloc.get_traced_memory()[1] - before_since
    del data
    tracemalloc.stop()

    data = history.since(0)
    samples = len(data["timestamps"])
    body = json.dumps({"seconds": CAPACITY, "interval": 1.0, "simulated": False, **data})
    result = {
        "machine": machine(),
        "quick": args.quick,
        "gpus": GPUS,
        "capacity": CAPACITY,
        "target": "history < 10 MB and bounded",
        "nbytes": history.nbytes(),
        "tracemalloc_bytes": {
            "empty": empty,
            "full_1x": full,
            "full_2x": double,
        },
        # Bounded: a second hour of appends adds nothing (1% slack for allocator noise).
        "bounded": double <= full * 1.01 and history.nbytes() == nbytes_full,
        "append_us": round(append_s * 1e6, 2),
        "since_all": {"samples": samples, **timed(lambda: history.since(0), repeats)},
        "since_last_300": timed(lambda: history.since(t0 + 2 * CAPACITY - 300), repeats),
        "since_all_peak_bytes": since_peak,
        "json_dumps_all": {"bytes": len(body), **timed(lambda: json.dumps(history.since(0)), repeats)},
    }
    result["within_target"] = max(full, double, result["nbytes"]) < TARGET_BYTES and result["bounded"]
    print(json.dumps(result, indent=2))
    print()
    mb = lambda n: f"{n / 2**20:.2f} MB"  # noqa: E731
    print("| measurement | result | target | met |")
    print("|---|---|---|---|")
    print(
        f"| History 8 GPUs x 3600 samples: nbytes / tracemalloc | {mb(result['nbytes'])} / {mb(full)} "
        f"| < 10 MB | {'yes' if result['within_target'] else 'NO'} |"
    )
    print(
        f"| after 2x capacity appends (tracemalloc) | {mb(double)} | bounded "
        f"| {'yes' if result['bounded'] else 'NO'} |"
    )
    print(f"| append() per sample | {result['append_us']} us | (context) | |")
    print(
        f"| since() all 3600 samples, min / median | {result['since_all']['min_ms']} / "
        f"{result['since_all']['median_ms']} ms | (context) | |"
    )
    print(
        f"| since() + json.dumps, all 3600 ({result['json_dumps_all']['bytes'] / 2**20:.1f} MB JSON) "
        f"| {result['json_dumps_all']['median_ms']} ms | (context) | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

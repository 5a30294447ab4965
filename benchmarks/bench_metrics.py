"""What a Prometheus scrape of /metrics costs: time, size, series, and NVML calls (none).

Two parts, both with 8 GPUs (fake NVML, ``tests/fake_pynvml.py``) and 50 kernels
(``--kernels``):

collector  In this process: the real sampler on the real NVML backend over the fake (12
           NVLink links a GPU), and jupyter-tfgpu's collector with 50 kernel rows (each on one
           or two GPUs, half with a cap, two thirds idle) and their usage totals. Times
           ``generate_latest`` of a registry holding only that collector, and counts the NVML
           calls made by the scraping thread while the sampler keeps sampling on its own (the
           product's rule: zero, ever).
server     A real server (``serve_fake.py``, the spec's NVML latencies, no NVLink) with 50 real
           kernels, each idle after one cell, listed in the fake as a GPU process holding 2 GiB,
           every other notebook with a cap. Scrapes ``/metrics`` over HTTP: the server-side
           time of each request (tornado's ``request_time()``, the time the handler held the
           event loop, as ``generate_latest`` runs on it), the client's, the page's size and
           series; and NVML calls per second during 30 s of scrapes (about 20 a second) and
           during 30 s without them.

    python benchmarks/bench_metrics.py                      # both parts, about 1.5 minutes
    python benchmarks/bench_metrics.py --quick              # 5 kernels in the server, 5 s windows
    python benchmarks/bench_metrics.py --parts collector    # in-process only, a few seconds
    python benchmarks/bench_metrics.py --markdown out.md    # also write the results as markdown

Prints JSON. Timings are reported, never asserted; the NVML call count of the collector part is
the one number with a target (0).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    REPO, FakeServer, call, execute, machine, percentile, start_session,
)  # fmt: skip

GPUS = 8
NVLINK_LINKS = 12
GIB = 2**30
KERNEL_BYTES = 2 * GIB


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        )
        return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _series(text: str) -> dict[str, int]:
    """Samples per family prefix: all, tfgpu_, and the rest (jupyter_server's and Python's)."""
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    tfgpu = [line for line in samples if line.startswith("tfgpu_")]
    by_name: dict[str, int] = {}
    for line in tfgpu:
        name = line.split("{", 1)[0].split(" ", 1)[0]
        by_name[name] = by_name.get(name, 0) + 1
    return {
        "all": len(samples), "tfgpu": len(tfgpu), "other": len(samples) - len(tfgpu),
        "tfgpu_by_name": by_name,
    }  # fmt: skip


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round(max(values) * 1000, 3),
    }


# -- the collector, in this process ------------------------------------------------------------


def _kernel_rows(gpus: list[Any], kernels: int) -> list[dict[str, Any]]:
    """Rows as the kernel registry hands them to metrics: every fifth kernel on two GPUs."""
    rows = []
    for k in range(kernels):
        on = [k % len(gpus)] + ([(k + 1) % len(gpus)] if k % 5 == 0 else [])
        rows.append(
            {
                "kernel_id": f"00000000-0000-4000-8000-{k:012d}",
                "notebook": f"project-{k % 7}/notebook-{k:02d}.ipynb",
                "idle_seconds": None if k % 3 == 0 else 60.0 * k,
                "limit_bytes": 8 * GIB if k % 2 == 0 else None,
                "per_gpu": [
                    {
                        "index": i,
                        "uuid": gpus[i].uuid,
                        "used_memory": (1 + k % 4) * GIB,
                        "source": "nvml",
                        "pids": [50_000 + k],
                    }
                    for i in on
                ],  # fmt: skip
            }
        )
    return rows


def bench_collector(kernels: int, scrapes: int) -> dict[str, Any]:
    """Time generate_latest over the collector; count the scraping thread's NVML calls."""
    from fake_gpus import make_fake

    from tests.fake_pynvml import FakeLink

    fake = make_fake(latency=False, gpus=GPUS)
    for gpu in fake.gpus:
        gpu.nvlink = [FakeLink(tx_kib=10**6, rx_kib=2 * 10**6) for _ in range(NVLINK_LINKS)]
    module = fake.module
    scraper = threading.get_ident()
    counted = {"scraper": 0, "all": 0}
    lock = threading.Lock()
    for name in [n for n in dir(module) if n.startswith("nvml") and callable(getattr(module, n))]:
        function = getattr(module, name)

        def wrapped(*args, _function=function, **kwargs):
            with lock:
                counted["all"] += 1
                if threading.get_ident() == scraper:
                    counted["scraper"] += 1
            return _function(*args, **kwargs)

        setattr(module, name, wrapped)
    sys.modules["pynvml"] = module

    from prometheus_client import CollectorRegistry, generate_latest

    from jupyter_tfgpu._version import __version__
    from jupyter_tfgpu.gpu.nvml import NvmlBackend
    from jupyter_tfgpu.server.metrics import ServerIdentity, SnapshotCollector
    from jupyter_tfgpu.server.kernels.usage import KernelUsage
    from jupyter_tfgpu.server.sampling.sampler import Sampler

    sampler = Sampler(NvmlBackend(), interval=0.2, process_interval=0.5, slow_interval=0.5)
    sampler.start()
    try:
        deadline = time.monotonic() + 30
        while not sampler.latest.gpus or sampler.latest.timestamp is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the sampler took no snapshot")
            time.sleep(0.05)
        gpus = list(sampler.latest.gpus)
        rows = _kernel_rows(gpus, kernels)
        usage = KernelUsage()
        for step in range(3):
            usage.add(1000.0 + step, sampler.latest.gpus, rows)
        collector = SnapshotCollector(
            snapshot=lambda: sampler.latest.gpus,
            kernel_rows=lambda: rows,
            sampler_stats=sampler.describe,
            identity=ServerIdentity("alice", "", socket.gethostname()),
            usage=usage.totals,
            placements=lambda: {
                ("most_free_memory", "placed"): kernels,
                ("most_free_memory", "partial"): 2,
            },
            version=__version__,
        )
        registry = CollectorRegistry()
        registry.register(collector)
        page = generate_latest(registry)  # warm-up
        with lock:
            counted.update(scraper=0, all=0)
        times = []
        started = time.perf_counter()
        for _ in range(scrapes):
            t0 = time.perf_counter()
            page = generate_latest(registry)
            times.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        with lock:
            during = dict(counted)
    finally:
        sampler.stop()
    return {
        "gpus": len(gpus),
        "kernels": kernels,
        "scrapes": scrapes,
        "generate_latest": _ms(times),
        "bytes": len(page),
        "series": _series(page.decode()),
        "nvml_calls_by_the_scraping_thread": during["scraper"],
        "nvml_calls_by_the_sampler_meanwhile": during["all"] - during["scraper"],
        "seconds": round(wall, 2),
    }


# -- a real server -----------------------------------------------------------------------------


def _start_kernel(server: FakeServer, i: int) -> dict[str, Any]:
    """A session (every other notebook with a cap), its kernel's PID listed in the fake as a GPU
    process holding 2 GiB, and one cell run in it (so it is idle, as most kernels are)."""
    notebook = f"metrics-{i:03d}.ipynb"
    if i % 2 == 0:
        status, _, _ = call(
            server, "PUT", f"tfgpu/api/policies/{notebook}", {"memory_limit_mb": 8192}
        )
        if status != 200:
            raise RuntimeError(f"PUT policies/{notebook}: {status}")
    session = start_session(server, notebook, timeout=180)
    kernel_id = session["kernel"]["id"]
    deadline = time.monotonic() + 120
    pid = None
    while pid is None and time.monotonic() < deadline:
        status, row, _ = call(server, "GET", f"tfgpu/api/kernels/{kernel_id}")
        pid = (row or {}).get("pid") if status == 200 else None
        if pid is None:
            time.sleep(0.2)
    if pid is None:
        raise RuntimeError(f"kernel {kernel_id}: no PID in GET kernels/{{id}}")
    spec = {"pid": pid, "gpu": i % GPUS, "mig": None, "used_memory": KERNEL_BYTES}
    status, _, _ = call(server, "POST", "bench/processes", {"add": [spec]})
    if status != 200:
        raise RuntimeError(f"POST bench/processes: {status}")
    for attempt in range(3):  # a websocket may close under a start storm on a small machine
        try:
            execute(server, kernel_id, "ran = True", timeout=180)
            break
        except RuntimeError:
            if attempt == 2:
                raise RuntimeError(
                    f"kernel {kernel_id}: no cell ran\n{server.log_tail()}"
                ) from None
            time.sleep(1)
    return {"session_id": session["id"], "kernel_id": kernel_id}


def bench_server(kernels: int, window: float) -> dict[str, Any]:
    """Scrape a real server with ``kernels`` kernels on 8 GPUs for ``window`` seconds."""
    out: dict[str, Any] = {"kernels": kernels}
    with FakeServer(extra=["--TFGPU.sample_interval=1"], launcher=["--gpus", str(GPUS)]) as server:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            sessions = list(pool.map(lambda i: _start_kernel(server, i), range(kernels)))
        out["kernels_started_s"] = round(time.monotonic() - started, 1)
        deadline = time.monotonic() + 180
        while True:
            rows = server.get("tfgpu/api/kernels")["kernels"]
            held = [r for r in rows if (r.get("gpu_memory") or {}).get("total")]
            if len(held) >= kernels:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(held)} of {kernels} kernels show GPU memory")
            time.sleep(0.5)

        # A window without scrapes, then one as long with about 20 scrapes a second: the
        # sampler's own NVML calls, and whether scrapes add any.
        before = server.nvml()
        time.sleep(window)
        idle = server.nvml()
        server.request("bench/requests?reset=1")
        client_times, sizes, page = [], [], b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < window:
            status, page, seconds = server.request("metrics")
            if status != 200:
                raise RuntimeError(f"GET metrics: HTTP {status}")
            client_times.append(seconds)
            sizes.append(len(page))
            time.sleep(max(0.0, 0.05 - seconds))
        scraping = time.monotonic() - t0
        after = server.nvml()
        served = server.get("bench/requests")
        (path,) = [p for p in served if p.endswith("/metrics")]
        out.update(
            {
                "scrapes": len(client_times),
                "server_side": {
                    k: round(served[path][k], 3) for k in ("count", "p50_ms", "p99_ms", "max_ms")
                },
                "client": _ms(client_times),
                "bytes": {"median": int(statistics.median(sizes)), "max": max(sizes)},
                "series": _series(page.decode()),
                "nvml_calls_per_s_without_scrapes": round(
                    (idle["calls"] - before["calls"]) / (idle["monotonic"] - before["monotonic"]), 1
                ),
                "nvml_calls_per_s_while_scraping": round(
                    (after["calls"] - idle["calls"]) / (after["monotonic"] - idle["monotonic"]), 1
                ),
                "scrapes_per_s": round(len(client_times) / scraping, 1),
            }
        )
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda s: call(server, "DELETE", f"api/sessions/{s['session_id']}"), sessions
                )
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results as the benchmarks page writes them."""
    m = result["machine"]
    lines = [
        "## /metrics: what a scrape costs",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, commit "
        f"{result['commit']}, with `python benchmarks/bench_metrics.py`: 8 GPUs (fake NVML) and "
        "50 kernels.",
        "",
    ]
    c = result.get("collector")
    if c:
        lines += [
            f"**The collector alone** (in this process, the real sampler on 8 GPUs with 12 NVLink "
            f"links each, {c['kernels']} kernel rows, every fifth on two GPUs, half with a cap, "
            f"two thirds idle; {c['scrapes']} scrapes):",
            "",
            "| figure | value |",
            "|---|---|",
            f"| `generate_latest` p50 / p99 / max | {c['generate_latest']['p50_ms']} / "
            f"{c['generate_latest']['p99_ms']} / {c['generate_latest']['max_ms']} ms |",
            f"| page size | {c['bytes'] / 1024:.1f} KiB |",
            f"| series (all `tfgpu_`) | {c['series']['tfgpu']} |",
            "| NVML calls made by the scraping thread | "
            f"**{c['nvml_calls_by_the_scraping_thread']}** (the sampler made "
            f"{c['nvml_calls_by_the_sampler_meanwhile']} meanwhile, on its own thread) |",
            "",
        ]
    s = result.get("server")
    if s:
        lines += [
            f"**A real server** (`serve_fake.py`, the spec's NVML latencies, {s['kernels']} real "
            f"kernels, each idle after one cell and listed as a GPU process, half with a cap; "
            f"{s['scrapes']} scrapes at about {s['scrapes_per_s']} a second):",
            "",
            "| figure | value |",
            "|---|---|",
            "| time on the event loop per scrape (server side) p50 / p99 / max | "
            f"{s['server_side']['p50_ms']} / {s['server_side']['p99_ms']} / "
            f"{s['server_side']['max_ms']} ms |",
            f"| scrape as the client sees it p50 / p99 / max | {s['client']['p50_ms']} / "
            f"{s['client']['p99_ms']} / {s['client']['max_ms']} ms |",
            f"| page size | {s['bytes']['median'] / 1024:.1f} KiB |",
            f"| series: all / `tfgpu_` / jupyter_server's and Python's | {s['series']['all']} / "
            f"{s['series']['tfgpu']} / {s['series']['other']} |",
            f"| NVML calls per second: without scrapes / while scraping | "
            f"{s['nvml_calls_per_s_without_scrapes']} / {s['nvml_calls_per_s_while_scraping']} |",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="collector,server", help="collector, server or both")
    parser.add_argument("--kernels", type=int, default=50, help="kernels (default 50)")
    parser.add_argument("--quick", action="store_true", help="5 real kernels, fewer scrapes")
    parser.add_argument("--markdown", default="", help="also write the results as markdown here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    parts = {p.strip() for p in args.parts.split(",")}
    result: dict[str, Any] = {"machine": machine(), "commit": _commit()}
    if "collector" in parts:
        result["collector"] = bench_collector(args.kernels, 200 if args.quick else 2000)
    if "server" in parts:
        result["server"] = bench_server(5 if args.quick else args.kernels, 5 if args.quick else 30)
    print(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the server core against serve_fake.py (fake NVML, 8 GPUs, spec latencies).

Sections (``--sections a,b,c,d,e``; all by default):
  a  backend calls per second with 1, 10 and 50 websocket clients: flat within 10%?
  b  seconds inside NVML per second of wall time vs nvml_budget, with and without PCIe watched
  c  jupyter_server's GET /api/status p50/p99 while 50 clients stream
  d  GET tfgpu/api/gpus p50/p99 with 64 concurrent clients
  e  server process CPU at sample_interval=1, 8 GPUs, 50 clients, --no-latency (% of one core)

Prints one JSON document, then a markdown table. No assertions: targets are reported, not enforced.
``--quick`` shortens every window for a smoke run (the numbers are then only indicative).
The sections are in ``benchmarks/sampler/``; this file is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import FakeServer, machine  # noqa: E402
from sampler.latency import section_c, section_d  # noqa: E402
from sampler.nvml_calls import section_a, section_b  # noqa: E402
from sampler.report import TARGETS, markdown  # noqa: E402
from sampler.server_cpu import section_e  # noqa: E402


def main() -> int:
    """Run the chosen sections and print JSON, then markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    parser.add_argument("--sections", default="abcde", help="which sections to run, e.g. 'ab'")
    parser.add_argument("--window", type=float, default=None, help="section a window per client count (s, rounded to whole 5-s slow cycles)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="record py-spy stacks of the server into this dir (d, e)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    sections = set(args.sections.replace(",", ""))
    q = args.quick
    settle = 1.0 if q else 3.0
    result: dict[str, Any] = {"machine": machine(), "quick": q, "targets": TARGETS, "sections": {}}
    started = time.monotonic()
    if sections & set("acd"):
        with FakeServer() as server:
            if "a" in sections:
                cycles = max(1, round((args.window or (5 if q else 20)) / 5))
                result["sections"]["a"] = section_a(server, cycles, settle)
            if "c" in sections:
                result["sections"]["c"] = section_c(server, 150 if q else 1000, 0.02, 60, settle)
            if "d" in sections:
                result["sections"]["d"] = section_d(server, 640 if q else 12800, 5 if q else 20, args.profile)
    if "b" in sections:
        result["sections"]["b"] = section_b(10 if q else 60, 20 if q else 120, 10, settle)
    if "e" in sections:
        result["sections"]["e"] = section_e(15 if q else 60, 5 if q else 30, settle, args.profile)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

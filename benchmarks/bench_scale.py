"""Scale: a start storm of real kernels on 8 GPUs x 7 MIG slices with 200 foreign GPU processes.

One server (``serve_fake.py --mig 7 --foreign-processes 200``: 8 H100s, each split into seven
1g.10gb slices, with the spec's per-call NVML latencies) and 50 websocket clients on the stream.
After a baseline, 30 real ipykernels are started at once through ``POST api/sessions``; as soon as
a kernel's PID is known it is listed in the fake as a GPU process on a MIG slice holding 2 GiB
(``bench/processes``), and the kernel runs one cell (which prints the bootstrap folder it
loaded). The storm ends when every kernel has answered. Then the script waits (bounded) until
the sampler's fast group is back at its configured interval and every kernel shows GPU memory,
and measures a window after that.

Measured from other processes than the server's: a poller process (GET ``tfgpu/api/gpus`` and
jupyter_server's ``/api/status`` every 200 ms, ``tfgpu/api/status`` every 500 ms,
``tfgpu/api/kernels`` every second, and one websocket client that logs every message), the
websocket clients' process, and this one (kernels, counters, server CPU through psutil).

Reports: time from the storm's end until the fast interval is back at the configured one (and
the largest fast and process-list intervals seen), staleness of ``GET gpus`` (now - snapshot
``timestamp``) during the storm and 30 s after, time until all kernels show GPU memory in
``GET kernels``, driver time per second and server CPU per phase, stream message size, and
p50/p99 of ``GET gpus`` and ``/api/status`` during the storm. Prints JSON, then a markdown table;
no figure is enforced.
The parts are in ``benchmarks/scale/``; this file is the command line (and the poller's).

    python benchmarks/bench_scale.py                       # the full set-up, 2-4 minutes
    python benchmarks/bench_scale.py --quick               # 2 GPUs x 2 slices, 4 kernels, 5 clients
    python benchmarks/bench_scale.py --kernels 10 --clients 10 --gpus 4 --mig 3 --foreign 50
    python benchmarks/bench_scale.py --checkout ../other   # the server runs that checkout's package
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine  # noqa: E402
from scale.figures import figures  # noqa: E402
from scale.poller import poll_main  # noqa: E402
from scale.report import markdown  # noqa: E402
from scale.storm import run  # noqa: E402

FULL = {
    "gpus": 8, "mig": 7, "foreign": 200, "kernels": 30, "clients": 50,
    "baseline_s": 10.0, "recovery_max_s": 120.0, "stable_s": 5.0, "after_s": 30.0,
}  # fmt: skip
QUICK = {
    "gpus": 2, "mig": 2, "foreign": 20, "kernels": 4, "clients": 5,
    "baseline_s": 4.0, "recovery_max_s": 20.0, "stable_s": 3.0, "after_s": 6.0,
}  # fmt: skip


def main() -> int:
    """Run the storm once; print the JSON document and a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down smoke run")
    for name in ("kernels", "clients", "gpus", "mig", "foreign"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"override: {name}")
    parser.add_argument(
        "--recovery-max", type=float, default=None, help="seconds to wait after the storm"
    )
    parser.add_argument("--after", type=float, default=None, help="seconds measured after recovery")
    parser.add_argument(
        "--checkout", default="",
        help="the server imports jupyter_tfgpu from this checkout (e.g. a git worktree of an "
        "earlier commit); default: the installed package",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result here")
    parser.add_argument("--raw", action="store_true", help="keep every poller record in the JSON")
    # The poller helper process (started by this script).
    parser.add_argument("--poll", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--observe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll:
        return poll_main(args)

    p = dict(QUICK if args.quick else FULL)
    for name in ("kernels", "clients", "gpus", "mig", "foreign"):
        if getattr(args, name) is not None:
            p[name] = max(0, getattr(args, name))
    p["kernels"], p["gpus"] = max(1, min(p["kernels"], 200)), max(1, p["gpus"])
    p["clients"] = min(p["clients"], 500)
    if args.recovery_max is not None:
        p["recovery_max_s"] = max(1.0, min(args.recovery_max, 600.0))
    if args.after is not None:
        p["after_s"] = max(1.0, min(args.after, 300.0))
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "params": p,
        "checkout": args.checkout or None,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tfgpu-bench-scale-") as workdir:
        try:
            raw = run(p, args.checkout or None, Path(workdir))
            result["package"] = raw["package"]
            result["checkout_at_start"] = raw["checkout_at_start"]
            result["checkout_at_end"] = raw["checkout_at_end"]
            start_digest = raw["checkout_at_start"].get("sampler_digest")
            result["sampler_changed_during_run"] = start_digest != raw["checkout_at_end"].get(
                "sampler_digest"
            )
            result["settle"] = raw["settle_reason"]
            result["stop"] = raw["stop"]
            result["leftover_kernels_killed"] = raw["leftover_kernels_killed"]
            result["sampler_at_end"] = raw["sampler_at_end"]
            result["figures"] = figures(raw, p)
            if args.raw:
                result["raw"] = {k: raw[k] for k in ("marks", "counters", "kernels", "records")}
        except Exception:  # noqa: BLE001 - reported in the JSON, not raised
            result["error"] = traceback.format_exc()[-4000:]
    result["total_s"] = round(time.monotonic() - started, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    if "figures" in result:
        print()
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

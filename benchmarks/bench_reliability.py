"""What the hardening holds, measured against serve_fake.py (a real server, fake NVML of 8 GPUs).

Sections (``--sections 1234567``; all by default), each on a fresh server:
  1  a hostile kernel floods ``kernel/report`` (4 threads: distinct PIDs, long UUIDs, 60 MB
     bodies, a 401-digit figure) while a well-behaved client polls status, gpus, kernels and
     /metrics: its answers and latency, the kernel's answers, server RSS before/after/+35 s
  2  NVML faults mid-run (Timeout, Unknown, a hanging call) while the client polls status, gpus
     and /metrics: answers, rows carrying ``errors``, faults raised, fields back after clearing
  3  another process holds the policy store's ``flock``: reads while held, a PUT while held
     (503 after the store's lock timeout) and after release
  4  kernel churn: 50 kernels started and stopped through the REST API in batches of 10:
     server RSS and threads before/after, leftover kernel processes, per-kernel state
     (``--kernels N`` for a longer churn, in batches of 10)
  5  a kernel loops on PUT and DELETE kernel/policy with its own token for 10 s while 1 (then 3)
     stream views are open: requests sent, accepted and refused (429), store writes (inotify),
     stream messages, bytes and policy pushes per view, a well-behaved client's latency
  6  5 websocket clients that complete the handshake and never read, for 60 s, against servers
     of 8 and of 64 fake GPUs sampled every 0.1 s: server RSS every 5 s and after they close,
     the bytes the server holds for them, and a reading client's message rate
  7  one of 8 GPUs fails at open (its memory query times out after hanging 1 s; or it is lost):
     time from the server's start to GET gpus listing 7 GPUs served and the lost one with its
     reason, and from clearing the fault to the GPU served (its 30 s re-probe)

Prints one JSON document, then a markdown table. No assertions: figures are reported, not
enforced. ``--quick`` shortens every window (about a minute; numbers only indicative).
Everything is on 127.0.0.1, every loop is bounded in count and time, children are stopped.
The sections are in ``benchmarks/reliability/``, one module each; this file is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_tfgpu.server.kernels.channel import REPORT_TTL  # noqa: E402
from jupyter_tfgpu.policy.store import LOCK_TIMEOUT  # noqa: E402
from jupyter_tfgpu.server.sampling.opening import LOST_RETRY_SECONDS  # noqa: E402
from reliability.churn import section_churn  # noqa: E402
from reliability.faults import section_faults  # noqa: E402
from reliability.flood import section_flood  # noqa: E402
from reliability.lost_at_open import section_lost_at_open  # noqa: E402
from reliability.policy_flood import section_policy_flood  # noqa: E402
from reliability.report import markdown  # noqa: E402
from reliability.stalled import section_stalled  # noqa: E402
from reliability.store_lock import section_store_lock  # noqa: E402

FULL = {
    "flood_s": 12.0, "flood_threads": 4, "big_mb": 60, "big_every_s": 3.0, "big_max": 4,
    "after_s": REPORT_TTL + 5, "fault_s": 15.0, "recover_s": 40.0, "hold_s": 11.5,
    "kernels": 50, "batch": 10,
    "policy_flood_s": 10.0, "views": (1, 3),
    "stalled": 5, "stalled_s": 60.0, "stalled_gpus": (8, 64), "rss_every_s": 5.0,
    "after_close_s": 15.0, "lost_gpu": 3, "lost_kinds": ("timeout", "lost"),
    "reprobe_wait_s": LOST_RETRY_SECONDS + 15,
}  # fmt: skip
QUICK = {
    "flood_s": 4.0, "flood_threads": 4, "big_mb": 60, "big_every_s": 2.0, "big_max": 1,
    "after_s": 5.0, "fault_s": 5.0, "recover_s": 10.0, "hold_s": LOCK_TIMEOUT + 2,
    "kernels": 10, "batch": 5,
    "policy_flood_s": 4.0, "views": (1,),
    "stalled": 5, "stalled_s": 15.0, "stalled_gpus": (8, 64), "rss_every_s": 5.0,
    "after_close_s": 6.0, "lost_gpu": 3, "lost_kinds": ("timeout",),
    "reprobe_wait_s": LOST_RETRY_SECONDS + 15,
}  # fmt: skip


SECTIONS = {
    "1": ("hostile_kernel_flood", section_flood),
    "2": ("nvml_faults", section_faults),
    "3": ("held_store_lock", section_store_lock),
    "4": ("kernel_churn", section_churn),
    "5": ("policy_flood", section_policy_flood),
    "6": ("stalled_clients", section_stalled),
    "7": ("gpu_lost_at_open", section_lost_at_open),
}


def main() -> int:
    """Run the chosen sections; print the JSON document and a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about a minute)")
    parser.add_argument("--sections", default="1234567", help="which sections to run, e.g. '57'")
    parser.add_argument("--kernels", type=int, default=None, help="section 4: kernels in all")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    params = dict(QUICK if args.quick else FULL)
    if args.kernels:
        params["kernels"] = max(params["batch"], min(args.kernels, 1000))
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "sections": {},
    }
    started = time.monotonic()
    for key in args.sections:
        if key not in SECTIONS:
            continue
        name, run = SECTIONS[key]
        t0 = time.monotonic()
        try:
            result["sections"][name] = run(params)
        except Exception:  # noqa: BLE001 - one broken section must not lose the others
            result["sections"][name] = {"error": traceback.format_exc()[-3000:]}
        result["sections"][name]["section_s"] = round(time.monotonic() - t0, 1)
        print(f"[{name}] done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    result["total_s"] = round(time.monotonic() - started, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The prepared GPU check: a real jupyter_server with jupyter-tfgpu, real kernels, one JSON report.

Run on the GPU machine by scripts/gpu-check.sh (``--backend nvml``), and here as a dry run
(``--backend simulated``): the server, sessions, policies, provisioner and attribution really
run; the checks that need JAX or PyTorch report ``skipped`` with the reason where the kernel's
Python lacks them, and the simulated backend (which reports a process's real resident memory as
its GPU memory) stands in for NVML in the attribution checks. The hard-caps servers (mps, nvml)
start too, and their checks report ``skipped`` with the server's reason where the machine cannot
run the mode. ``--probe`` only prints what hard caps need on the machine.

Stdlib only, plus jupyter_client to talk to the kernels; HTTP goes through urllib. Every wait is
bounded, and kernels and server are shut down at the end, also on failure or SIGTERM. Prints one
JSON document (also written to $OUT/gpu-check.json when OUT is set); the exit code is 0 only when
the report's result is "pass". This file is the entry point; the parts are in
scripts/gpu_check_runner/ and the code run inside the kernels in scripts/gpu_check_kernel/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

# Run as a script (python3 scripts/gpu_check.py), so scripts/ is sys.path[0] for these.
from gpu_check_runner.checks import DEFAULT_MARGIN_MIB
from gpu_check_runner.phases import PHASE_NAMES
from gpu_check_runner.probe import probe_host
from gpu_check_runner.run import GpuCheck, Interrupted
from gpu_check_runner.wheels import plan_wheels


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; plan wheels or run the check and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=("nvml", "simulated"),
        default="nvml",
        help="nvml on the GPU machine; simulated for the dry run",
    )
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole check")
    parser.add_argument(
        "--margin-mib",
        type=int,
        default=DEFAULT_MARGIN_MIB,
        help="only recorded: a kernel's frameworks get its cap less the CUDA context",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASE_NAMES),
        help=f"the servers to run, comma-separated, of {', '.join(PHASE_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="print what hard caps need on this machine (seconds: no server, no kernel), then exit",
    )
    parser.add_argument(
        "--context", help="folder where gpu-check.sh left nvidia-smi's and pip's records"
    )
    parser.add_argument(
        "--plan-wheels", metavar="DIR", help="print the wheels in DIR to install, then exit"
    )
    parser.add_argument(
        "--plan-out", metavar="FILE", help="with --plan-wheels: write the decisions here"
    )
    args = parser.parse_args(argv)
    unknown = set(args.phases.split(",")) - set(PHASE_NAMES)
    if unknown:
        parser.error(f"--phases: no phase {', '.join(sorted(unknown))}")
    if args.probe:
        probe = json.dumps(probe_host(), indent=1)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu-check-probe.json").write_text(probe + "\n")
        print(probe)
        return 0
    if args.plan_wheels:
        install, decisions = plan_wheels(args.plan_wheels)
        if args.plan_out:
            Path(args.plan_out).write_text(json.dumps(decisions, indent=1))
        print("\n".join(install))
        return 0

    def interrupted(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupted)
    report = GpuCheck(args).run()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-check.json").write_text(
            json.dumps(report, indent=1, default=repr) + "\n"
        )
    # Compact on stdout (one line): remote runners often keep only the end of the output.
    print(json.dumps(report, separators=(",", ":"), default=repr))
    return 0 if report["result"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())

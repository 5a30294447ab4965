"""What the kernel bootstrap (jupyter_tfgpu/in_kernel/bootstrap/) adds to Python start-up.

The provisioner puts the bootstrap folder on PYTHONPATH of every kernel, so its sitecustomize runs
in every Python process a kernel starts. Measured hyperfine-style: a fresh interpreter per run,
warm-up runs first, the variants interleaved run by run so machine drift hits each alike.

  1. ``python -c pass`` without the bootstrap, with it and no policy, and with it and a policy,
     the folder both as checked out (no ``.pyc``: the worst case) and byte-compiled (as pip
     leaves an installed package). Target: under 5 ms added at the median.
  2. ``python -c "import tensorflow"`` without the bootstrap, and with it, a policy with GPU
     settings and a report folder (the hook fires, applies and writes its record).
     Target: under 1% added at the median.

Prints one JSON document, then a markdown table. No assertions: targets are reported, not
enforced. ``--quick`` runs fewer times (the numbers are then only indicative).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO, machine, percentile  # noqa: E402

BOOTSTRAP = REPO / "jupyter_tfgpu" / "in_kernel" / "bootstrap"
POLICY = json.dumps({"memory_growth": True, "memory_limit_mb": 4096, "devices": None})
# Inherited values of these would change what the children do.
LEAKY = ("PYTHONPATH", "TFGPU_POLICY", "TFGPU_RECORD_DIR", "CUDA_VISIBLE_DEVICES")
TARGET_PASS_MS = 5.0
TARGET_TF_PERCENT = 1.0


def base_env() -> dict[str, str]:
    """The parent's environment without bootstrap variables; TF quiet; no .pyc written."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    return env


def copies(workdir: Path) -> dict[str, Path]:
    """The bootstrap folder twice: as checked out (source only) and byte-compiled."""
    source = workdir / "source" / "bootstrap"
    compiled = workdir / "compiled" / "bootstrap"
    for target in (source, compiled):
        shutil.copytree(BOOTSTRAP, target, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(compiled), quiet=1)
    return {"source": source, "compiled": compiled}


def time_run(code: str, env: dict[str, str]) -> float:
    """Wall time of one fresh interpreter running ``code``, in milliseconds."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return (time.perf_counter() - start) * 1000


def measure(code: str, variants: dict[str, dict[str, str]], runs: int, warmup: int) -> dict:
    """Run every variant ``runs`` times, interleaved; return their timings in ms."""
    for _ in range(warmup):
        for env in variants.values():
            time_run(code, env)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, env in variants.items():
            times[name].append(time_run(code, env))
    return times


def summary(times: list[float], baseline: list[float] | None) -> dict[str, Any]:
    """Median, p90 and min, and what the variant adds to the baseline."""
    row = {
        "runs": len(times),
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(percentile(times, 90), 2),
        "min_ms": round(min(times), 2),
    }
    if baseline is not None:
        base_median = statistics.median(baseline)
        row["added_median_ms"] = round(statistics.median(times) - base_median, 2)
        row["added_p90_ms"] = round(percentile(times, 90) - percentile(baseline, 90), 2)
        row["added_percent"] = round(100 * row["added_median_ms"] / base_median, 2)
    return row


HOOK_CHECK = """
import json, time, tfgpu_bootstrap
real, spent = tfgpu_bootstrap._after_import, []

def timed(name, module):
    start = time.perf_counter()
    real(name, module)
    spent.append((time.perf_counter() - start) * 1000)

tfgpu_bootstrap._after_import = timed
import tensorflow
record = tfgpu_bootstrap.record()
entry = record["frameworks"].get("tensorflow", {})
hooked = entry.get("apply_count") == 1
print(json.dumps({"hooked": hooked, "errors": record["errors"], "ms": spent}))
"""


def hook_check(env: dict[str, str], runs: int = 3) -> dict[str, Any]:
    """Prove the 'with' runs really apply the policy, and time the hook itself in-process.

    The hook's own time (loading tfgpu_apply, parsing the policy, the TF calls, the report) is
    a few ms, well inside the run-to-run noise of a 2 s TensorFlow import, so it is reported
    separately.
    """
    seen = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", HOOK_CHECK], env=env, capture_output=True, text=True, check=True
        )
        seen.append(json.loads(out.stdout.strip().splitlines()[-1]))
    # One total per process: TensorFlow's __init__ imports Keras, which is hooked as well.
    spent = [sum(run["ms"]) for run in seen if run["ms"]]
    return {
        "hooked": all(run["hooked"] for run in seen) and len(spent) == runs,
        "errors": [error for run in seen for error in run["errors"]],
        "hook_ms_median": round(statistics.median(spent), 2) if spent else None,
    }


def bench_pass(paths: dict[str, Path], runs: int) -> dict[str, Any]:
    """Section 1: ``python -c pass``."""
    env = base_env()
    variants = {"no bootstrap": env}
    for kind, path in paths.items():
        with_path = dict(env, PYTHONPATH=str(path))
        variants[f"bootstrap, no policy, {kind}"] = with_path
        variants[f"bootstrap + policy, {kind}"] = dict(with_path, TFGPU_POLICY=POLICY)
    times = measure("pass", variants, runs, warmup=5)
    base = times["no bootstrap"]
    rows = {name: summary(t, None if name == "no bootstrap" else base) for name, t in times.items()}
    worst = max(r.get("added_median_ms", 0) for r in rows.values())
    return {
        "rows": rows,
        "target": f"< {TARGET_PASS_MS} ms added (median)",
        "met": worst < TARGET_PASS_MS,
    }


def bench_tensorflow(paths: dict[str, Path], runs: int, workdir: Path) -> dict[str, Any]:
    """Section 2: ``python -c "import tensorflow"``."""
    env = base_env()
    with_hook = dict(
        env,
        PYTHONPATH=str(paths["source"]),
        TFGPU_POLICY=POLICY,
        TFGPU_RECORD_DIR=str(workdir / "records"),
    )
    check = hook_check(with_hook)
    variants = {"no bootstrap": env, "bootstrap + policy, source": with_hook}
    times = measure("import tensorflow", variants, runs, warmup=1)
    base = times["no bootstrap"]
    rows = {name: summary(t, None if name == "no bootstrap" else base) for name, t in times.items()}
    added = rows["bootstrap + policy, source"]["added_percent"]
    return {
        "rows": rows,
        "hook_check": check,
        "target": f"< {TARGET_TF_PERCENT}% added (median)",
        "met": added < TARGET_TF_PERCENT,
    }


def markdown(result: dict[str, Any]) -> str:
    """The results as one markdown table, with the machine underneath."""
    lines = [
        "| command | variant | runs | median ms | p90 ms | added (median) | added (p90) "
        "| target | met |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for section, command in (("pass", "python -c pass"), ("tensorflow", "import tensorflow")):
        if section not in result:
            continue
        block = result[section]
        for name, row in block["rows"].items():
            baseline = "added_median_ms" not in row
            added = (
                ""
                if baseline
                else f"{row['added_median_ms']:+.2f} ms ({row['added_percent']:+.2f}%)"
            )
            added_p90 = "" if baseline else f"{row['added_p90_ms']:+.2f} ms"
            target = "" if baseline else block["target"]
            met = "" if baseline else ("yes" if block["met"] else "no")
            lines.append(
                f"| `{command}` | {name} | {row['runs']} | {row['median_ms']:.2f} | "
                f"{row['p90_ms']:.2f} | {added} | {added_p90} | {target} | {met} |"
            )
    m = result["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']} (UTC).")
    if "tensorflow" in result:
        check = result["tensorflow"]["hook_check"]
        lines.append(
            f"Hook check (import tensorflow with the bootstrap): applied once per process: "
            f"{check['hooked']}, errors: {len(check['errors'])}, time inside the hook: "
            f"{check['hook_ms_median']} ms (median of 3 processes)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the sections and print JSON, then markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (indicative numbers)")
    parser.add_argument(
        "--runs", type=int, help="runs per variant of `python -c pass` (default 40)"
    )
    parser.add_argument("--tf-runs", type=int, help="runs per variant of `import tensorflow` (10)")
    parser.add_argument("--no-tensorflow", action="store_true", help="skip section 2")
    args = parser.parse_args(argv)
    runs = args.runs or (10 if args.quick else 40)
    tf_runs = args.tf_runs or (3 if args.quick else 10)
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="tfgpu-bench-bootstrap-") as tmp:
        workdir = Path(tmp)
        paths = copies(workdir)
        result["pass"] = bench_pass(paths, runs)
        probe = "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is None)"
        has_tf = subprocess.run([sys.executable, "-c", probe], env=base_env(), check=False)
        has_tf = has_tf.returncode == 0
        if has_tf and not args.no_tensorflow:
            result["tensorflow"] = bench_tensorflow(paths, tf_runs, workdir)
    print(json.dumps(result, indent=2))
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The prepared GPU check, one command on the GPU machine: installs the wheels carried in .whl/
# (made by scripts/gpu-wheels.sh) beside the image's packages, then runs scripts/gpu_check.py
# against a real jupyter_server with NVML, and prints ONE JSON report on stdout (also written
# to $OUT/gpu-check.json). Everything else goes to log files ($OUT/gpu-check-*.log when OUT is
# set). Exit code: gpu_check.py's (0 = every check passed).
#   on the GPU machine, in a copy of this repository with .whl/ beside it: bash scripts/gpu-check.sh
#   dry run on a machine without a GPU: PYTHON=python3.12 bash scripts/gpu-check.sh --backend simulated
#   first, in seconds, what hard caps need there: bash scripts/gpu-check.sh --probe
# Extra arguments go to gpu_check.py.
set -uo pipefail  # no -e: every failure still ends in one JSON report
cd "$(dirname "$0")/.." || exit 2

python=${PYTHON:-python3}
site=${TFGPU_CHECK_SITE:-/tmp/tfgpu-site}
limit_s=${TFGPU_CHECK_TIMEOUT:-465}
context=$(mktemp -d /tmp/tfgpu-check-context.XXXXXX)
scratch=$(mktemp -d /tmp/tfgpu-check-home.XXXXXX)
trap 'rm -rf "$context" "$scratch"' EXIT

# Throw-away home and Jupyter folders: nothing the check does touches the machine's own.
export HOME="$scratch/home" JUPYTER_CONFIG_DIR="$scratch/config" JUPYTER_DATA_DIR="$scratch/data"
export JUPYTER_RUNTIME_DIR="$scratch/runtime" IPYTHONDIR="$scratch/ipython"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$HOME"

# The machine, for the report.
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L >"$context/nvidia-smi-L.txt" 2>"$context/nvidia-smi-error.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        >"$context/nvidia-smi-query.csv" 2>>"$context/nvidia-smi-error.txt"
else
    echo "nvidia-smi not found" >"$context/nvidia-smi-error.txt"
fi

# Wheels: install only those the image lacks, or has in a version the others cannot use.
{
    echo "# $("$python" --version 2>&1) at $(command -v "$python")"
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        if "$python" scripts/gpu_check.py --plan-wheels .whl --plan-out "$context/wheel-plan.json" \
            >"$context/wheels.txt"; then
            mapfile -t wheels <"$context/wheels.txt"
            [ "${#wheels[@]}" -eq 0 ] || "$python" -m pip install --no-index --no-deps --no-compile \
                --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
        fi
    else
        echo "no .whl/ folder: run scripts/gpu-wheels.sh on a machine with PyPI and copy .whl/ here"
        false
    fi
    echo $? >"$context/install-rc"
} >"$context/install.log" 2>&1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

# The check; `timeout` sends SIGTERM first, and gpu_check.py then stops kernels and server and
# still prints its report.
report="$context/report.json"
timeout -k 15 "$limit_s" "$python" scripts/gpu_check.py --context "$context" "$@" \
    >"$report" 2>"$context/gpu-check.stderr"
rc=$?

if [ -n "${OUT:-}" ]; then
    cp "$context/install.log" "$OUT/gpu-check-install.log" 2>/dev/null
    cp "$context/gpu-check.stderr" "$OUT/gpu-check-stderr.log" 2>/dev/null
fi
if [ -s "$report" ]; then
    cat "$report"
else
    # gpu_check.py died before its report: say so in the same one-JSON form.
    "$python" - "$rc" "$context" <<'EOF'
import json, os, pathlib, sys
rc, context = sys.argv[1], pathlib.Path(sys.argv[2])
def tail(name, n=30):
    try:
        return (context / name).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []
report = {"check": "jupyter-tfgpu gpu-check", "result": "fail",
          "errors": [f"gpu_check.py exited with code {rc} before printing its report"],
          "stderr_tail": tail("gpu-check.stderr"), "install_log_tail": tail("install.log")}
if os.environ.get("OUT"):
    pathlib.Path(os.environ["OUT"], "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps(report, separators=(",", ":")))
EOF
    [ "$rc" -eq 0 ] && rc=1
fi
exit "$rc"

#!/usr/bin/env bash
# Fill .whl/ with every wheel the GPU machine needs to run scripts/gpu-check.sh: this project's
# own wheel plus jupyter_server, ipykernel, jupyter_client and their dependencies, built for the
# GPU machine's Python (cp312, manylinux x86-64). Runs on a dev machine that reaches PyPI.
# Versions are pinned to the local .venv's when it has them (the ones the test suite ran with).
# The GPU machine needs no network: copy this folder over with the repository.
# Wheels of packages its image already has are kept too: gpu-check.sh installs only those the
# image lacks or has in a version that does not satisfy what the other wheels require.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
# The GPU machine's Python (3.12 on the machines this was run on; TFGPU_GPU_PYTHON for another).
target_python=${TFGPU_GPU_PYTHON:-3.12}
abi=cp${target_python/./}
limit_mib=48
dest=.whl

if ! git check-ignore -q "$dest/"; then
    echo "gpu-wheels: $dest/ is not ignored by git; add '/$dest/' to .gitignore or .git/info/exclude" >&2
    exit 1
fi
if [ ! -f jupyter_tfgpu/labextension/static/style.js ]; then
    echo "gpu-wheels: jupyter_tfgpu/labextension/ is not built; run 'pip install -e .' first (needs npm)" >&2
    exit 1
fi

rm -rf "$dest"
mkdir -p "$dest"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# This project: pure Python; the built lab extension is already there, so the build hook skips npm.
"$python" -m pip wheel -q . --no-deps -w "$scratch/project"
project_wheel=$(ls "$scratch"/project/jupyter_tfgpu-*.whl)
cp "$project_wheel" "$dest/"

# Pin to the local environment's versions where it has them; the constraints only apply to
# packages the resolver picks, so pins of unrelated packages (tensorflow...) do nothing.
constraints=$scratch/constraints.txt
if [ -x .venv/bin/python ]; then
    .venv/bin/python -m pip freeze --exclude-editable \
        | grep -E '^[A-Za-z0-9_.-]+==' | grep -viE '^jupyter[-_]tfgpu==' >"$constraints" || true
else
    : >"$constraints"
fi

# --no-deps is not used: pip resolves the whole tree for the target interpreter, with wheels only.
"$python" -m pip download -q \
    --only-binary=:all: --python-version "$target_python" --implementation cp --abi "$abi" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -c "$constraints" -d "$scratch/deps" \
    "$dest/$(basename "$project_wheel")" "ipykernel>=6.29,<8" "jupyter_server>=2.14,<3" "jupyter_client>=8.6,<9"
for wheel in "$scratch"/deps/*.whl; do
    case $(basename "$wheel") in
        jupyter_tfgpu-*) ;;  # already there
        *) cp "$wheel" "$dest/" ;;
    esac
done

# Never bundle the big frameworks or JupyterLab: the GPU machine has torch and jax, and the
# check needs no lab front end.
for name in jupyterlab tensorflow tensorflow_cpu torch jax jaxlib; do
    if ls "$dest/$name"-[0-9]*.whl >/dev/null 2>&1; then
        echo "gpu-wheels: $name was resolved into $dest/; it must not be" >&2
        exit 1
    fi
done

find "$dest" -type f -name '*.whl' -printf '%s %p\n' | sort -k2 | awk '{printf "%8.1f KiB  %s\n", $1 / 1024, $2}'
total=$(find "$dest" -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s}')
count=$(find "$dest" -type f -name '*.whl' | wc -l)
printf 'gpu-wheels: %d wheels, %.1f MiB in %s/ (limit %d MiB, to keep the copy small)\n' \
    "$count" "$(echo "$total / 1048576" | bc -l)" "$dest" "$limit_mib"
if [ "$total" -gt $((limit_mib * 1048576)) ]; then
    echo "gpu-wheels: over ${limit_mib} MiB" >&2
    exit 1
fi

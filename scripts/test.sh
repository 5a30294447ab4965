#!/usr/bin/env bash
# Install everything the tests need into ./.venv, then run them with a throw-away HOME.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k policy`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The real-browser tests drive Debian's Chromium (apt; needs root or sudo).
bash scripts/install-browser.sh
bash scripts/install-prometheus.sh  # Prometheus and promtool, for tests/monitoring (apt too)

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade "pip>=24"
# Editable install: also builds the lab extension (npm) through hatch-jupyter-builder.
python -m pip install -q -e ".[test,docs]"
# A real JupyterHub and its proxy (npm) for tests/server/test_jupyterhub.py.
bash scripts/install-hub.sh

# Nothing a test does may touch the real home or Jupyter folders.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export HOME="$scratch/home" JUPYTER_CONFIG_DIR="$scratch/config" JUPYTER_DATA_DIR="$scratch/data"
export JUPYTER_RUNTIME_DIR="$scratch/runtime" IPYTHONDIR="$scratch/ipython"
mkdir -p "$HOME"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1

# Lint and front-end unit tests first, so pytest's summary is the last line printed.
ruff check .
(cd labextension && npm test --silent && npm run lint --silent)
python -m pytest -p no:cacheprovider "$@"

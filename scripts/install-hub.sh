#!/usr/bin/env bash
# Install what tests/server/test_jupyterhub.py needs: JupyterHub from PyPI into the active Python, and
# the hub's proxy, configurable-http-proxy, from npm into build/hub/ (git-ignored), where the
# test finds it. Needs Node.js 20+ and npm (the lab extension's build needs them anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

JUPYTERHUB_VERSION=6.1.1
CHP_VERSION=5.2.0  # 5.3 needs a newer Node.js than 20 (commander 15)

python -m pip install -q "jupyterhub==${JUPYTERHUB_VERSION}"
mkdir -p build/hub
npm install --prefix build/hub --no-audit --no-fund --loglevel=error \
  "configurable-http-proxy@${CHP_VERSION}"
build/hub/node_modules/.bin/configurable-http-proxy --version

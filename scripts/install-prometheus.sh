#!/usr/bin/env bash
# Install Debian's Prometheus (the server and promtool) for the monitoring tests
# (tests/monitoring): `promtool check rules|config`, `promtool test rules`, and an end-to-end
# test that runs /usr/bin/prometheus on 127.0.0.1 with its own config and storage. The package's
# own service, where the system starts one, is not used by the tests.
set -euo pipefail

if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then
  /usr/bin/promtool --version 2>&1 | head -n 1 || true
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
/usr/bin/promtool --version 2>&1 | head -n 1

#!/usr/bin/env bash
# Install Debian's Chromium for the real-browser tests (tests/browser). Playwright drives it at
# /usr/bin/chromium; nothing downloads a browser of its own (never run `playwright install`).
# DejaVu gives the screenshots real text on a bare image.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  /usr/bin/chromium --version 2>/dev/null || true
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version

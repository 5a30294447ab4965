#!/usr/bin/env bash
# Build the documentation site with every warning an error, then check every internal link of
# the built site, offline. Needs the docs extra: python -m pip install -e ".[docs]".
#   bash scripts/build-docs.sh [SITE_DIR]     (default build/site, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."

site=${1:-build/site}
export NO_MKDOCS_2_WARNING=1  # Material's banner about MkDocs 2.0, not a warning about the docs
python -m mkdocs build --strict --clean --site-dir "$site"
python docs/_tools/check_links.py "$site"

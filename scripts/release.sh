#!/usr/bin/env bash
# Build a release of jupyter-tfgpu: the sdist and the wheel, with the production build of the
# lab extension inside, checked (scripts/check_dist.py and twine), in one folder.
#
#   bash scripts/release.sh [--out DIR] [--wheelhouse]
#
# It builds from a copy of this checkout's files (git's tracked and not-ignored ones), never in
# the checkout itself, so a development build of the lab extension or a stale lib/ cannot end up
# in a release. The lab extension is installed from labextension/package-lock.json (npm ci).
# --wheelhouse also downloads every dependency (with the lab and widgets extras) into
# DIR/wheelhouse, so a machine without internet access can install it:
#   pip install --no-index --find-links DIR/wheelhouse "jupyter-tfgpu[lab,widgets]"
# Needs Python 3.10+ with build and twine (pip install ".[release]"), Node.js 20 and npm.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/dist
wheelhouse=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    --wheelhouse) wheelhouse=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "release.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
"$python" -c "import build, twine" 2>/dev/null || {
  echo "release.sh: needs build and twine in $python: pip install \".[release]\"" >&2
  exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/dist"
cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  source="commit $(git rev-parse --short HEAD)"
  [ -z "$(git status --porcelain)" ] || source="$source with uncommitted changes"
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"
else
  source="a tree without git"
  tar --exclude=.venv --exclude=node_modules --exclude=./build --exclude=./dist \
    --exclude=./labextension/lib --exclude=./jupyter_tfgpu/labextension \
    --exclude=__pycache__ -cf - . | tar -xf - -C "$work/src"
fi

echo "release.sh: building from $source"
(cd "$work/src/labextension" && npm ci --no-audit --no-fund --loglevel=error)
# The sdist first, then the wheel from the sdist (what pip does with an sdist too).
"$python" -m build --outdir "$work/dist" "$work/src"
"$python" "$root/scripts/check_dist.py" "$work/dist"
"$python" -m twine check --strict "$work/dist"/*

mkdir -p "$out"
cp "$work/dist"/* "$out"/
wheel=$(cd "$out" && ls -t jupyter_tfgpu-*.whl | head -n 1)
if [ "$wheelhouse" = 1 ]; then
  "$python" -m pip download --quiet --dest "$out/wheelhouse" "$out/$wheel[lab,widgets]"
fi
echo "release.sh: built from $source, in $out:"
(cd "$out" && sha256sum jupyter_tfgpu-* | sed 's/^/  /')
[ "$wheelhouse" = 0 ] || echo "  wheelhouse/ ($(ls "$out/wheelhouse" | wc -l) wheels and sdists)"

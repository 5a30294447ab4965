"""Check a built release (the sdist and the wheel in one folder) before anyone installs it.

    python scripts/check_dist.py DIST_FOLDER

It opens the archives (it installs nothing) and fails, naming what is missing, unless: there is
one wheel and one sdist of the same version; the wheel's metadata, the package's ``__version__``
and the lab extension's package.json agree on it; the wheel carries the kernel bootstrap, the
files the server reads at run time, the built lab extension (its entry point included) and the
config that enables the server extension; and the sdist carries the sources and the built lab
extension, so installing the sdist needs no Node.js. twine checks the metadata's form.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

PACKAGE = "jupyter_tfgpu"
LAB = "share/jupyter/labextensions/jupyter-tfgpu"
# Files the server or the kernels read at run time, besides the Python modules.
RUNTIME_FILES = (
    "in_kernel/bootstrap/sitecustomize.py",
    "in_kernel/bootstrap/tfgpu_bootstrap.py",
    "policy/policy.schema.json",
    "server/api/openapi.yaml",
    "server/events/enforcement.yaml",
    "prometheus/tfgpu-rules.yaml",
    "prometheus/tfgpu-dashboard.json",
)
SDIST_FILES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "labextension/package.json",
    "labextension/package-lock.json",
    "labextension/src/index.ts",
    f"{PACKAGE}/labextension/package.json",
    "jupyter-config/server-config/jupyter_tfgpu.json",
)


def fail(message: str) -> None:
    """Stop with the reason."""
    sys.exit(f"check_dist: {message}")


def one(folder: Path, pattern: str) -> Path:
    """The one file matching ``pattern``."""
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        fail(f"expected one {pattern} in {folder}, found {[p.name for p in found] or 'none'}")
    return found[0]


def check_wheel(wheel: Path) -> str:
    """The wheel's version, once everything it must carry is there."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            fail(f"{wheel.name} has no METADATA")
        meta = Parser().parsestr(archive.read(meta_name).decode())
        version = meta["Version"]
        data = f"{PACKAGE}-{version}.data/data"
        missing = [f"{PACKAGE}/{path}" for path in RUNTIME_FILES if f"{PACKAGE}/{path}" not in names]
        for path in (f"{LAB}/package.json", f"{LAB}/install.json",
                     "etc/jupyter/jupyter_server_config.d/jupyter_tfgpu.json"):  # fmt: skip
            if f"{data}/{path}" not in names:
                missing.append(f"{data}/{path}")
        if missing:
            fail(f"{wheel.name} lacks {', '.join(missing)}")
        lab = json.loads(archive.read(f"{data}/{LAB}/package.json"))
        load = (lab.get("jupyterlab", {}).get("_build") or {}).get("load")
        if not load or f"{data}/{LAB}/{load}" not in names:
            fail(f"{wheel.name}: the lab extension is not built (no {LAB}/{load or '<_build.load>'})")
        versions = {
            "METADATA": version,
            "_version.py": _python_version(archive.read(f"{PACKAGE}/_version.py").decode()),
            "lab package.json": lab.get("version"),
        }
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), "")
        if "tfgpu-provisioner" not in (archive.read(entry_points).decode() if entry_points else ""):
            fail(f"{wheel.name} does not register the tfgpu-provisioner entry point")
    if len(set(versions.values())) != 1:
        fail(f"{wheel.name}: the versions disagree: {versions}")
    for field in ("Name", "Summary", "License-Expression", "Requires-Python"):
        if not meta[field]:
            fail(f"{wheel.name}: METADATA has no {field}")
    if not any(r.startswith("jupyter-server") for r in meta.get_all("Requires-Dist") or []):
        fail(f"{wheel.name}: METADATA does not require jupyter-server")
    return version


def check_sdist(sdist: Path, version: str) -> None:
    """The sdist is the same version and can be installed without Node.js."""
    top = f"{PACKAGE}-{version}"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    missing = [path for path in SDIST_FILES if f"{top}/{path}" not in names]
    if missing:
        fail(f"{sdist.name} lacks {', '.join(missing)} (under {top}/)")


def _python_version(source: str) -> str | None:
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", source)
    return match.group(1) if match else None


def main(folder: str) -> None:
    """Check the release in ``folder``; print what was checked."""
    dist = Path(folder)
    wheel = one(dist, f"{PACKAGE}-*-py3-none-any.whl")
    version = check_wheel(wheel)
    sdist = one(dist, f"{PACKAGE}-*.tar.gz")
    if sdist.name != f"{PACKAGE}-{version}.tar.gz":
        fail(f"{sdist.name} is not version {version} of the wheel")
    check_sdist(sdist, version)
    print(f"check_dist: {wheel.name} and {sdist.name} carry version {version}, the kernel "
          "bootstrap, the built lab extension and the server config")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: python scripts/check_dist.py DIST_FOLDER")
    main(sys.argv[1])

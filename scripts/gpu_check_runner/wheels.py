"""Which carried wheels gpu-check.sh installs, decided before anything is installed."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def plan_wheels(directory: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Which carried wheels to install: those the image lacks or has in an unsuitable version."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # then any installed version counts as good enough
        Requirement = None  # noqa: N806
    wheels = sorted(Path(directory).glob("*.whl"))
    needs: dict[str, list[str]] = {}
    if Requirement is not None:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                headers = archive.read(meta).decode("utf-8", "replace").split("\n\n", 1)[0]
            for line in headers.splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                if str(req.specifier):
                    needs.setdefault(_norm(req.name), []).append(str(req.specifier))
    install, decisions = [], []
    for wheel in wheels:
        name = wheel.name.split("-")[0]
        key = _norm(name)
        try:
            present = metadata.version(name)
        except metadata.PackageNotFoundError:
            present = None
        decision = {"wheel": wheel.name, "image_version": present, "requires": needs.get(key, [])}
        unmet = []
        if present is not None and Requirement is not None:
            unmet = [
                s
                for s in needs.get(key, [])
                if not SpecifierSet(s).contains(Version(present), prereleases=True)
            ]
        if present is None or unmet or key == "jupyter-tfgpu":
            if present is None:
                decision["action"] = "install"
            elif unmet:
                decision["action"] = f"install (image's {present} fails {', '.join(unmet)})"
            else:
                decision["action"] = "install (the package under test)"
            install.append(str(wheel))
        else:
            decision["action"] = "skip (the image's version satisfies the other wheels)"
        decisions.append(decision)
    return install, decisions

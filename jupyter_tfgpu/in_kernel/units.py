"""Memory sizes as people type them ("4GiB", "512M", "1.5g") and as the magic shows them."""

from __future__ import annotations

import re

MiB = 2**20  # defined once for the kernel side (the server side has its own)
GiB = 2**30
# Every unit is binary, as docker's --memory and nvidia-smi count: 4G = 4GB = 4GiB = 4096 MiB.
_FACTORS_MIB = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_mib(text: str) -> int:
    """A size such as ``4GiB``, ``512MiB``, ``4G`` or ``2048`` (MiB) as whole MiB (ValueError)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(
            f"{text!r} is not a size: use a number with an optional unit, e.g. 4GiB, 512MiB, 4G "
            "(a bare number is MiB)"
        )
    number, unit = match.groups()
    mib = round(float(number) * _FACTORS_MIB[unit.lower()])
    if mib < 1:
        raise ValueError(f"{text!r} is less than 1 MiB")
    return mib


def format_bytes(value: float | None) -> str:
    """``3.2 GiB``-style text for a byte count; an en dash when unknown."""
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop always returns


def format_mib(mib: int | None) -> str:
    """A MiB count as the shortest exact unit: ``4 GiB``, ``1536 MiB``."""
    if mib is None:
        return "–"
    if mib % 1024 == 0:
        return f"{mib // 1024} GiB"
    return f"{mib} MiB"

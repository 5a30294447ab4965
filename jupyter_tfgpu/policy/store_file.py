"""The policy store's file: decode it, write it atomically, set an unreadable one aside.

Functions of the file alone; ``PolicyStore`` decides when each runs and under which lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1

Stamp = tuple[int, int, int]


class CorruptStore(ValueError):
    """The store file holds something that is not a policy store."""


def stamp_of(path: Path) -> Stamp | None:
    """What changes whenever the file is replaced or edited; None when there is no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    # The inode changes with every atomic replace, even one within the mtime granularity.
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def decode(raw: bytes) -> dict[str, dict[str, Any]]:
    """The policies in a store file's bytes (CorruptStore when they are not a policy store)."""
    try:
        # Decoding inside the try: bytes that are not UTF-8 are a corrupt file too.
        data = json.loads(raw.decode("utf-8"))
        policies = data["policies"]
        if not isinstance(policies, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in policies.items()
        ):
            raise ValueError("'policies' must map notebook paths to objects")
        return policies
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptStore(f"{type(err).__name__}: {err}") from err


def set_aside(path: Path) -> Path | None:
    """Move the file to ``<name>.corrupt-<time>`` beside it; None if it was gone already."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while aside.exists():
        aside = aside.with_name(f"{aside.name}.{n}")
        n += 1
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


def remove_stale_temp_files(path: Path) -> None:
    """Temp files of writers that died mid-write (only writers holding the lock make them)."""
    for stale in path.parent.glob(f".{path.name}.*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def write_atomically(path: Path, policies: dict[str, dict[str, Any]]) -> Stamp:
    """Replace the file with ``policies`` (temp file, fsync, rename, fsync of the folder);
    returns the stamp of what it wrote."""
    data = {"version": FORMAT_VERSION, "policies": dict(sorted(policies.items()))}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
            # The stamp of what this write put there, whatever another process does next.
            st = os.fstat(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return (st.st_ino, st.st_mtime_ns, st.st_size)

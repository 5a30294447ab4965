"""The record a kernel process's bootstrap writes (what it applied or skipped per framework),
read without trusting the kernel that wrote it."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

# The bootstrap's record is a few KiB; the kernel writes the file, so its size is not trusted.
MAX_RECORD_BYTES = 256 * 1024
# The record's fields (the bootstrap's tfgpu_record.record()) and the JSON types each must have
# when present.
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "pid": (int,),
    "ppid": (int,),
    "policy": (dict, type(None)),
    "frameworks": (dict,),
    "errors": (list,),
    "reporter": (dict, type(None)),
}


def read_record(path: str) -> dict[str, Any] | None:
    """A kernel process's record file: None when there is none, ``{"error": ...}`` when it is
    too large, not a file, not JSON or not shaped like a record."""
    try:
        # O_NONBLOCK: a FIFO put there must not hang the reading thread; O_NOFOLLOW: no links.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        return {"error": f"the record file could not be opened ({err.strerror})"}
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return {"error": "the record file is not a regular file; not read"}
        if info.st_size > MAX_RECORD_BYTES:
            return {"error": _too_large(info.st_size)}
        data = f.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:  # it grew since fstat
        return {"error": _too_large(len(data))}
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        return {"error": "the record file is not valid JSON"}
    if not isinstance(record, dict):
        return {"error": "the record file does not hold a JSON object"}
    for name, types in RECORD_FIELDS.items():
        value = record.get(name)
        if name in record and (not isinstance(value, types) or isinstance(value, bool)):
            return {"error": f"the record file's {name!r} has the wrong type"}
    return record


def _too_large(size: int) -> str:
    return f"the record file is {size} bytes, over the limit of {MAX_RECORD_BYTES}; not read"

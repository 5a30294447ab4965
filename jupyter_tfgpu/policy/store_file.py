"""The policy store's file: read it safely, decode it, write it atomically, set a bad one aside.

Functions of the file alone; ``PolicyStore`` decides when each runs and under which lock.

The file sits in the user's data folder, so any notebook can put anything there: a FIFO, a
device, a file of gigabytes, JSON built to exhaust the decoder. Only a regular file of at most
``MAX_STORE_BYTES`` is read, without blocking; everything else, and every content that is not a
policy store, is a ``CorruptStore``, which the store sets aside and reports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
# A policy with a 50-character path and four fields is about 230 bytes on disk, so 16 MiB holds
# some 70,000 notebooks' policies, far more than a server has. Every write rewrites and fsyncs
# the whole file and every change is decoded whole: at 16 MiB, encoding or decoding takes about
# 0.6 s (measured on a 2-core machine), a cost that grows with the size; the bound caps it.
MAX_STORE_BYTES = 16 * 1024 * 1024
# A store this server writes nests 4 deep (file, policies, policy, devices); a deeper one was
# not written by it, and one deep enough exhausts the recursion of whatever compares or encodes
# it next (a write, the change listener, a JSON answer) after the decoder let it through.
MAX_NESTING = 10
# The kinds of files that are not regular files, as an admin would name them.
FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}

Stamp = tuple[int, int, int]


class CorruptStore(ValueError):
    """The store file holds something that is not a policy store."""


def stamp_of(path: Path) -> Stamp | None:
    """What changes whenever the file is replaced or edited; None when there is no file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    # The inode changes with every atomic replace, even one within the mtime granularity.
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_regular(path: Path, limit: int = MAX_STORE_BYTES) -> tuple[bytes, Stamp] | None:
    """The file's bytes and stamp, or None when there is no file; never blocks on the file.

    CorruptStore when the path is not a regular file or holds more than ``limit`` bytes; the
    OSError of a file that cannot be read (a folder, no permission).
    """
    try:
        before = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # no file, or no folder that could hold one
        return None
    # Looked at before opening: opening a device can have effects of its own (a tape rewinds).
    _check_regular(path, before, limit)
    try:
        # O_NONBLOCK: a FIFO put there since the stat makes open return, not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        opened = os.fstat(fd)
        _check_regular(path, opened, limit)  # what was opened, whatever the path names now
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew since the fstat
                raise CorruptStore(_too_large(path, size, limit))
    finally:
        os.close(fd)
    return b"".join(chunks), (opened.st_ino, opened.st_mtime_ns, opened.st_size)


def _check_regular(path: Path, st: os.stat_result, limit: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        # Not set aside: it may be a folder of the admin's, named by mistake.
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(st.st_mode):
        kind = FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise CorruptStore(f"{path} is {kind}, not a regular file")
    if st.st_size > limit:
        raise CorruptStore(_too_large(path, st.st_size, limit))


def _too_large(path: Path, size: int, limit: int) -> str:
    return f"{path} holds {size} bytes, larger than the {limit} bytes a policy store may hold"


def decode(raw: bytes) -> dict[str, dict[str, Any]]:
    """The policies in a store file's bytes; CorruptStore, and nothing else, for any other bytes."""
    try:
        # Decoding inside the try: bytes that are not UTF-8 are a corrupt file too.
        data = json.loads(raw.decode("utf-8"))
        policies = data["policies"]
        if not isinstance(policies, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in policies.items()
        ):
            raise ValueError("'policies' must map notebook paths to objects")
        _check_nesting(policies)
        # A lone surrogate ("\ud800") decodes, but could never be written back as UTF-8.
        json.dumps(policies, ensure_ascii=False).encode("utf-8")
        return policies
    # RecursionError: a nest deeper than the decoder's recursion limit; MemoryError: bounded
    # by the file's size, but a small server may still run short.
    except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as err:
        raise CorruptStore(f"{type(err).__name__}: {err}") from err


def _check_nesting(policies: dict[str, Any]) -> None:
    """ValueError when ``policies`` (the file's second level) nests deeper than MAX_NESTING."""
    # Iterative: a recursive walk is what a deep nest breaks.
    stack: list[tuple[Any, int]] = [(policies, 2)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ValueError(f"the file nests deeper than {MAX_NESTING} levels")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def encode(policies: dict[str, dict[str, Any]]) -> bytes:
    """The file's bytes for ``policies``."""
    data = {"version": FORMAT_VERSION, "policies": dict(sorted(policies.items()))}
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


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


def probe_folder(path: Path, lock_path: Path) -> None:
    """Do what a write does first (make the folder, open the lock file, make a temp file) and
    undo the temp file; the OSError of the first step that fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+"):
        pass
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    # A writer's clean-up (it removes what looks like a dead writer's temp file) may beat us.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def user_name() -> str:
    """This process's user, as an admin would name it in chown."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        return f"uid {os.geteuid()}"


def remove_stale_temp_files(path: Path) -> None:
    """Temp files of writers that died mid-write (only writers holding the lock make them)."""
    for stale in path.parent.glob(f".{path.name}.*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def write_atomically(path: Path, content: bytes) -> Stamp:
    """Replace the file with ``content`` (temp file, fsync, rename, fsync of the folder);
    returns the stamp of what it wrote."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
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

"""Cgroup v2 for NVML memory limits: a parent cgroup for this server, and one leaf per kernel.

NVML sets a GPU memory limit on a cgroup v2 folder that has the ``dmem`` controller's files. A
cgroup gets them when its parent lists ``dmem`` in ``cgroup.subtree_control``, and cgroup v2
lets a cgroup (other than the root) do that only while it holds no process of its own. So, in
the server's own cgroup S (``/proc/self/cgroup``), this server makes::

    S/tfgpu-<pid>/                 dmem enabled for its children
    S/tfgpu-<pid>/server/          the server's own process, moved here so S holds none
    S/tfgpu-<pid>/kernel-<id>-<n>/ one per kernel start; the kernel's launcher joins it

and enables ``dmem`` in S's and the parent's ``cgroup.subtree_control``. That needs S to hold no
process but the server (a systemd service, or a container whose entry point execs the server);
otherwise it is a missing requirement, said in words, and nothing is changed.

When the server stops, each leaf is removed once no process is left in it, the controllers it
enabled are disabled again, the server moves back to S and the parent is removed. A leaf that
still holds processes (a child the kernel detached) is left, its limits with it, and reported;
it is tried again later, and a later server in the same cgroup removes what is left of a
server that is gone. All of it is file I/O on cgroupfs: call it from a worker thread, never on
the event loop.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Callable

import psutil

from jupyter_tfgpu.server.hardcaps.host import CGROUP_ROOT, PROC_SELF_CGROUP, cgroup_v2_path

MOUNT = CGROUP_ROOT
PROCS = "cgroup.procs"
CONTROLLERS = "cgroup.controllers"
SUBTREE = "cgroup.subtree_control"
DMEM = "dmem"
DMEM_FILE = "dmem.max"  # a cgroup has dmem's files when its parent enabled the controller
SERVER_LEAF = "server"
PARENT_NAME = re.compile(r"^tfgpu-(\d+)$")


class CgroupUnavailable(Exception):
    """A requirement for per-kernel cgroups is not met; the message says which, in words."""


class CgroupFiles:
    """cgroup v2's file operations, on cgroupfs itself; a fake tree in tests answers as the
    kernel does."""

    def read(self, path: Path) -> str:
        """The text of an interface file."""
        return path.read_text(encoding="utf-8")

    def write(self, path: Path, text: str) -> None:
        """One write() of ``text``: cgroupfs takes one value per write, and its errors
        (EBUSY, EINVAL, ENOENT) mean what the cgroup v2 documentation says."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def mkdir(self, path: Path) -> None:
        """Make a cgroup (the kernel fills in its files)."""
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        """Remove a cgroup that holds no process and no cgroup."""
        os.rmdir(path)

    def own_cgroup(self) -> str | None:
        """This process's cgroup v2 path ("/a/b"), from /proc/self/cgroup; None when it has
        none (cgroup v1 only)."""
        return cgroup_v2_path(PROC_SELF_CGROUP.read_text(encoding="utf-8"))


class ServerCgroups:
    """This server's parent cgroup and its kernels' leaves (see the module)."""

    def __init__(
        self,
        mount: Path = MOUNT,
        files: CgroupFiles | None = None,
        pid: int | None = None,
        alive: Callable[[int], bool] = psutil.pid_exists,
    ) -> None:
        self.mount = Path(mount)
        self.files = files or CgroupFiles()
        self.pid = os.getpid() if pid is None else pid
        self.alive = alive  # whether a server that left a parent behind still runs
        self.own: Path | None = None  # S, the server's cgroup when it opened
        self.parent: Path | None = None
        self._enabled_in_own = False  # whether S's dmem was enabled by this server
        self._leaves = 0  # numbers each kernel start's leaf

    # -- opening and closing -------------------------------------------------------------------

    def open(self, own_path: str | None = None) -> list[str]:
        """Make the parent and move the server into it (CgroupUnavailable when a requirement is
        missing, nothing left changed); returns what was found left by servers that are gone.
        ``own_path`` is the server's cgroup as /proc/self/cgroup says ("/a/b"); read if None."""
        own = self._own_cgroup(own_path)
        left = self.remove_stale(own)
        parent = own / f"tfgpu-{self.pid}"
        undo: list[Callable[[], None]] = []
        try:
            self._make(parent)
            undo.append(lambda: self.files.rmdir(parent))
            self._make(parent / SERVER_LEAF)
            undo.append(lambda: self.files.rmdir(parent / SERVER_LEAF))
            self.files.write(parent / SERVER_LEAF / PROCS, str(self.pid))
            undo.append(lambda: self.files.write(own / PROCS, str(self.pid)))
            if DMEM not in self.subtree_control(own):
                self._enable(own)
                self._enabled_in_own = True
                undo.append(lambda: self.files.write(own / SUBTREE, f"-{DMEM}"))
            self._enable(parent)
        except (OSError, CgroupUnavailable):
            for step in reversed(undo):
                try:
                    step()
                except OSError:
                    pass
            self._enabled_in_own = False
            raise
        self.own, self.parent = own, parent
        return left

    def close(self) -> list[str]:
        """Remove what open() made; returns the leaves left because processes remain in them
        (then the parent stays, and the server with it, to be removed by a later server)."""
        parent, own = self.parent, self.own
        if parent is None or own is None:
            return []
        left = [str(leaf) for leaf in self.leaves() if self.remove(leaf)]
        if left:
            return left
        try:
            self.files.write(parent / SUBTREE, f"-{DMEM}")
            if self._enabled_in_own:
                self.files.write(own / SUBTREE, f"-{DMEM}")
            self.files.write(own / PROCS, str(self.pid))
            self.files.rmdir(parent / SERVER_LEAF)
            self.files.rmdir(parent)
        except OSError as err:
            return [f"{parent}: {err.strerror or err}"]
        self.parent = self.own = None
        return []

    # -- kernels' leaves -----------------------------------------------------------------------

    def make_leaf(self, kernel_id: str) -> Path:
        """A new leaf for one start of a kernel, with dmem's files."""
        if self.parent is None:
            raise CgroupUnavailable("the server's cgroup is not open")
        self._leaves += 1
        leaf = self.parent / f"kernel-{safe_name(kernel_id)}-{self._leaves}"
        self._make(leaf)
        if not (leaf / DMEM_FILE).exists():
            self.files.rmdir(leaf)
            raise CgroupUnavailable(f"{leaf} has no {DMEM_FILE}: dmem is not enabled above it")
        return leaf

    def processes(self, cgroup: Path) -> list[int]:
        """The processes in a cgroup now (its cgroup.procs)."""
        text = self.files.read(cgroup / PROCS)
        return [int(word) for word in text.split() if word.isdigit()]

    def remove(self, leaf: Path) -> list[int]:
        """Remove a leaf once no process is left in it; the processes still in it otherwise."""
        try:
            left = self.processes(leaf)
        except FileNotFoundError:
            return []  # gone already
        if left:
            return left
        try:
            self.files.rmdir(leaf)
        except FileNotFoundError:
            return []
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            return self.processes(leaf) or [0]  # busy with a process that came and went
        return []

    def leaves(self) -> list[Path]:
        """The kernels' leaves under the parent now (the server's own excluded)."""
        if self.parent is None:
            return []
        return sorted(p for p in self.parent.iterdir() if p.is_dir() and p.name != SERVER_LEAF)

    # -- reading -------------------------------------------------------------------------------

    def controllers(self, cgroup: Path) -> list[str]:
        """The controllers a cgroup may use (its cgroup.controllers)."""
        return self.files.read(cgroup / CONTROLLERS).split()

    def subtree_control(self, cgroup: Path) -> list[str]:
        """The controllers a cgroup enables for the cgroups below it."""
        return self.files.read(cgroup / SUBTREE).split()

    def remove_stale(self, own: Path) -> list[str]:
        """Remove what servers that are gone left in ``own``; returns what could not be."""
        left: list[str] = []
        for parent in sorted(own.iterdir()) if own.is_dir() else []:
            match = PARENT_NAME.match(parent.name)
            if not parent.is_dir() or match is None:
                continue
            if int(match.group(1)) != self.pid and self.alive(int(match.group(1))):
                continue  # another server, running
            leaves = [leaf for leaf in sorted(parent.iterdir()) if leaf.is_dir()]
            busy = [leaf for leaf in leaves if self.remove(leaf)]
            try:
                if not busy:
                    self.files.rmdir(parent)
            except OSError as err:
                busy.append(parent)
                left.append(f"{parent}: {err.strerror or err}")
                continue
            left.extend(f"{leaf} still holds processes" for leaf in busy)
        return left

    # -- the requirements ----------------------------------------------------------------------

    def _own_cgroup(self, relative: str | None) -> Path:
        if not (self.mount / CONTROLLERS).is_file():
            raise CgroupUnavailable(
                f"cgroup v2 is not mounted at {self.mount} (cgroup v1, or a hybrid layout): "
                "NVML memory limits need cgroup v2"
            )
        relative = relative or self.files.own_cgroup()
        if relative is None:
            raise CgroupUnavailable("this process has no cgroup v2 path in /proc/self/cgroup")
        own = self.mount / relative.lstrip("/")
        if DMEM not in self.controllers(self.mount):
            raise CgroupUnavailable(
                f"the kernel offers no dmem controller ({self.mount / CONTROLLERS} lacks it): "
                "NVML memory limits on a cgroup need Linux 6.14 or later"
            )
        if DMEM not in self.controllers(own):
            raise CgroupUnavailable(
                f"the dmem controller is not enabled for the server's cgroup {own}: its parent's "
                f"{SUBTREE} lacks dmem"
            )
        return own

    def _make(self, cgroup: Path) -> None:
        try:
            self.files.mkdir(cgroup)
        except OSError as err:
            why = err.strerror or err
            raise CgroupUnavailable(f"cannot make the cgroup {cgroup}: {why}") from err

    def _enable(self, cgroup: Path) -> None:
        try:
            self.files.write(cgroup / SUBTREE, f"+{DMEM}")
        except OSError as err:
            if err.errno == errno.EBUSY:
                others = [p for p in self.processes(cgroup) if p != self.pid]
                raise CgroupUnavailable(
                    f"the server's cgroup {cgroup} holds other processes ({len(others)}, e.g. "
                    f"{', '.join(map(str, others[:3]))}), and cgroup v2 enables dmem below a "
                    "cgroup only while it holds none: run the server as the only process of its "
                    "cgroup (a systemd service, or a container whose entry point execs it)"
                ) from err
            raise CgroupUnavailable(
                f"cannot enable dmem in {cgroup / SUBTREE}: {err.strerror or err}"
            ) from err


def safe_name(kernel_id: str) -> str:
    """A kernel id as a folder name: what is not a letter, a digit, '-' or '_' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", kernel_id)[:64] or "kernel"

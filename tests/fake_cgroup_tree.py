"""A temporary cgroup v2 tree that answers as the kernel's cgroupfs does, for tests without root.

``FakeCgroupTree(tmp_path)`` makes a mount folder with the files cgroup v2 has
(cgroup.controllers, cgroup.subtree_control, cgroup.procs, cgroup.events, cgroup.type, and
dmem.max / dmem.min / dmem.current where dmem is enabled from above), and a cgroup for the
server (``own``) holding the test's own process. Its ``files`` is a ``CgroupFiles`` that the
server's code writes through; it keeps the rules of cgroup v2 that the code depends on:

- a new cgroup gets the controllers its parent enables, and dmem's files with dmem;
- ``+c`` in cgroup.subtree_control needs ``c`` in the cgroup's controllers (ENOENT), and a
  cgroup other than the root that holds processes cannot enable any (EBUSY, "no internal
  processes"); ``-c`` is refused while a child enables ``c`` below it (EBUSY);
- a pid written to cgroup.procs leaves every other cgroup; a cgroup enabling controllers below
  it takes no process (EBUSY); a pid that does not exist is ESRCH;
- rmdir of a cgroup that holds processes or cgroups is EBUSY.

``unjoinable = True`` makes every cgroup made from then on one no process can join (its
cgroup.procs cannot be written), as a cgroup whose procs file another user owns.

A process outside the test (a kernel's launcher) joins a leaf by appending its pid to the
leaf's cgroup.procs, as it would on cgroupfs. What cgroupfs does by itself, children staying in
their parent's cgroup, the tree does when it is read: a live process whose nearest listed
ancestor is in a cgroup is listed there too from then on (so a child that outlives its parent
stays where it was), which is what a forked process does on Linux.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import psutil

from jupyter_tfgpu.server.hardcaps.nvml_cgroups import CgroupFiles

ROOT_CONTROLLERS = "cpuset cpu io memory pids dmem"


def _busy(path: Path, why: str) -> OSError:
    return OSError(errno.EBUSY, f"Device or resource busy ({why})", str(path))


class FakeCgroupFiles(CgroupFiles):
    """CgroupFiles over a FakeCgroupTree, with the kernel's rules (see the module)."""

    def __init__(self, tree: FakeCgroupTree) -> None:
        self.tree = tree
        self.writes: list[tuple[str, str]] = []  # (path relative to the mount, text), in order

    def read(self, path: Path) -> str:
        if path.name == "cgroup.procs":
            return "".join(f"{pid}\n" for pid in self.tree.members(path.parent))
        return super().read(path)

    def write(self, path: Path, text: str) -> None:
        self.writes.append((str(path.relative_to(self.tree.mount)), text))
        cgroup, name = path.parent, path.name
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if name == "cgroup.subtree_control":
            self.tree.control(cgroup, text.strip())
        elif name == "cgroup.procs":
            self.tree.move(int(text.strip()), cgroup)
        else:
            path.write_text(text, encoding="utf-8")

    def mkdir(self, path: Path) -> None:
        self.tree.make(path)

    def rmdir(self, path: Path) -> None:
        self.tree.remove(path)

    def own_cgroup(self) -> str | None:
        return self.tree.cgroup_path_of(os.getpid())


class FakeCgroupTree:
    """A cgroup v2 mount under a temporary folder (see the module)."""

    def __init__(
        self,
        base: Path,
        own: str = "system.slice/jupyter.service",
        root_controllers: str = ROOT_CONTROLLERS,
        delegate_dmem: bool = True,
    ) -> None:
        self.unjoinable = False
        self.mount = Path(base) / "cgroup"
        self.mount.mkdir(parents=True)
        self._write_files(self.mount, root_controllers, root=True)
        here = self.mount
        for part in Path(own).parts:
            enable = root_controllers.split() if delegate_dmem else [
                c for c in root_controllers.split() if c != "dmem"
            ]
            for controller in enable:
                if controller in self._controllers(here):
                    self._set_subtree(here, self._subtree(here) + [controller])
            here = here / part
            self.make(here)
        self.own = here
        self.move(os.getpid(), here)
        self.files = FakeCgroupFiles(self)

    # -- what cgroupfs does ---------------------------------------------------------------------

    def make(self, path: Path) -> None:
        """mkdir on cgroupfs: the folder with its files."""
        os.mkdir(path)
        self._write_files(path, " ".join(self._subtree(path.parent)), root=False)
        if self.unjoinable:
            (path / "cgroup.procs").unlink()
            (path / "cgroup.procs").mkdir()  # a write to it fails, as a read-only file's would

    def remove(self, path: Path) -> None:
        """rmdir on cgroupfs."""
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if any(p.is_dir() and p.name != "cgroup.procs" for p in path.iterdir()):  # unjoinable's
            raise _busy(path, "it has child cgroups")
        if self.members(path):
            raise _busy(path, "it holds processes")
        shutil.rmtree(path)

    def control(self, cgroup: Path, change: str) -> None:
        """A write to cgroup.subtree_control: "+c" or "-c"."""
        sign, controller = change[:1], change[1:]
        enabled = self._subtree(cgroup)
        if sign == "+":
            if controller not in self._controllers(cgroup):
                raise FileNotFoundError(errno.ENOENT, f"{controller} is not available", str(cgroup))
            if cgroup != self.mount and self.members(cgroup):
                raise _busy(cgroup, "it holds processes")
            if controller not in enabled:
                self._set_subtree(cgroup, enabled + [controller])
        elif sign == "-":
            for child in (p for p in cgroup.iterdir() if p.is_dir()):
                if controller in self._subtree(child):
                    raise _busy(cgroup, f"{child.name} enables {controller}")
            self._set_subtree(cgroup, [c for c in enabled if c != controller])
        else:
            raise OSError(errno.EINVAL, "Invalid argument", str(cgroup))

    def move(self, pid: int, cgroup: Path) -> None:
        """A pid written to cgroup.procs."""
        if not psutil.pid_exists(pid):
            raise ProcessLookupError(errno.ESRCH, "No such process", str(cgroup))
        if cgroup != self.mount and self._subtree(cgroup):
            raise _busy(cgroup, "it enables controllers below it")
        for procs in self.mount.rglob("cgroup.procs"):
            listed = self._listed(procs.parent)
            if pid in listed:
                self._set_listed(procs.parent, [p for p in listed if p != pid])
        self._set_listed(cgroup, self._listed(cgroup) + [pid])

    def members(self, cgroup: Path) -> list[int]:
        """The live processes in a cgroup: listed there, or forked from one that is (then listed
        there from now on, as a process that outlives its parent stays in its cgroup)."""
        listed = [pid for pid in self._listed(cgroup) if psutil.pid_exists(pid)]
        everywhere = self._all_listed()
        for pid in list(listed):
            if pid == os.getpid():
                # The test's process is the server: what it starts stays in its cgroup only
                # until it joins its own (found through its parents by cgroup_path_of).
                continue
            try:
                children = psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                if child.pid not in everywhere and child.pid not in listed:
                    listed.append(child.pid)
        if cgroup != self.mount or listed:
            self._set_listed(cgroup, listed)
        return listed

    def cgroup_of(self, pid: int) -> str | None:
        """The folder of the cgroup ``pid`` is in (for the fake NVML); None outside the tree."""
        path = self.cgroup_path_of(pid)
        return None if path is None else str(self.mount / path.lstrip("/"))

    def cgroup_path_of(self, pid: int) -> str | None:
        """What /proc/<pid>/cgroup would say after "0::"."""
        try:
            lineage = [pid] + [p.pid for p in psutil.Process(pid).parents()]
        except psutil.Error:
            lineage = [pid]
        for candidate in lineage:
            for procs in sorted(self.mount.rglob("cgroup.procs"), key=lambda p: -len(p.parts)):
                if candidate in self._listed(procs.parent):
                    if candidate != pid:
                        self.members(procs.parent)  # it forked from there: list it there
                    relative = procs.parent.relative_to(self.mount)
                    return "/" if relative == Path(".") else f"/{relative}"
        return None

    def leaves(self, under: Path) -> list[Path]:
        """The cgroups directly under a folder."""
        return sorted(p for p in under.iterdir() if p.is_dir())

    # -- files ----------------------------------------------------------------------------------

    def _write_files(self, path: Path, controllers: str, root: bool) -> None:
        (path / "cgroup.controllers").write_text(controllers + "\n" if controllers else "")
        (path / "cgroup.subtree_control").write_text("")
        (path / "cgroup.procs").write_text("")
        if not root:
            (path / "cgroup.events").write_text("populated 0\nfrozen 0\n")
            (path / "cgroup.type").write_text("domain\n")
        if root:
            (path / "dmem.capacity").write_text("nvidia/0000:00:1e.0 85899345920\n")
        if "dmem" in controllers.split() and not root:
            self._dmem_files(path, True)

    @staticmethod
    def _dmem_files(path: Path, present: bool) -> None:
        for name in ("dmem.max", "dmem.min", "dmem.low", "dmem.current"):
            if present:
                (path / name).write_text("")
            else:
                (path / name).unlink(missing_ok=True)

    @staticmethod
    def _controllers(cgroup: Path) -> list[str]:
        return (cgroup / "cgroup.controllers").read_text().split()

    @staticmethod
    def _subtree(cgroup: Path) -> list[str]:
        return (cgroup / "cgroup.subtree_control").read_text().split()

    def _set_subtree(self, cgroup: Path, controllers: list[str]) -> None:
        (cgroup / "cgroup.subtree_control").write_text(" ".join(controllers) + "\n")
        for child in (p for p in cgroup.iterdir() if p.is_dir()):
            (child / "cgroup.controllers").write_text(" ".join(controllers) + "\n")
            self._dmem_files(child, "dmem" in controllers)

    @staticmethod
    def _listed(cgroup: Path) -> list[int]:
        try:
            text = (cgroup / "cgroup.procs").read_text()
        except OSError:  # gone, or made unjoinable
            return []
        return [int(word) for word in text.split() if word.isdigit()]

    def _set_listed(self, cgroup: Path, pids: list[int]) -> None:
        if (cgroup / "cgroup.procs").is_dir():
            return
        (cgroup / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))
        events = cgroup / "cgroup.events"
        if events.exists():
            events.write_text(f"populated {int(bool(pids))}\nfrozen 0\n")

    def _all_listed(self) -> set[int]:
        return {pid for procs in self.mount.rglob("cgroup.procs") for pid in self._listed(procs.parent)}

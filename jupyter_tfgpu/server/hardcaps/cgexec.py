"""The kernel's launcher under NVML memory limits: join the kernel's cgroup, then become the kernel.

``python -I .../cgexec.py [--failed FILE] <cgroup folder> -- <kernel command...>`` writes its own
pid to the folder's cgroup.procs, checks that the cgroup lists it, and execs the kernel command
in the same process (same pid, same environment). So no code of the kernel runs outside the
cgroup, and every process the kernel starts is in it too (a fork stays in its parent's cgroup).

When it cannot join, it starts nothing: it says why on stderr (and in FILE, for the server) and
exits with ``JOIN_FAILED``; jupyter's restarter starts the kernel again, and the server, having
read FILE, gives it its cooperative settings only, saying why.

It imports nothing but the standard library, and runs as a file (not ``-m``), isolated (``-I``)
from the kernel's PYTHONPATH and its sitecustomize: it is the first thing of each kernel start.
"""

from __future__ import annotations

import os
import sys

JOIN_FAILED = 87  # the exit status that means "not in its cgroup, nothing started"
EXEC_FAILED = 127  # as a shell says of a command it cannot run
USAGE = "usage: cgexec.py [--failed FILE] <cgroup folder> -- <command> [arguments...]"


def join(folder: str) -> None:
    """Put this process in the cgroup at ``folder``; OSError when it is not listed there after."""
    procs = os.path.join(folder, "cgroup.procs")
    pid = os.getpid()
    fd = os.open(procs, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)
    with open(procs, encoding="utf-8") as listed:
        if str(pid) not in listed.read().split():
            raise OSError(f"{procs} does not list this process after the write")


def main(argv: list[str]) -> int:
    """Join the cgroup and exec the command; the exit status when either fails."""
    failed = None
    if argv[:1] == ["--failed"] and len(argv) > 1:
        failed, argv = argv[1], argv[2:]
    if len(argv) < 3 or argv[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    folder, command = argv[0], argv[2:]
    try:
        join(folder)
    except OSError as err:
        why = f"the kernel could not join its cgroup {folder} ({err})"
        print(
            f"jupyter-tfgpu: {why}; it is not started here, so that it never runs without its "
            "NVML memory limit unsaid",
            file=sys.stderr,
        )
        if failed:
            try:
                with open(failed, "w", encoding="utf-8") as file:
                    file.write(why)
            except OSError as unsaid:
                print(f"jupyter-tfgpu: cannot tell the server ({failed}): {unsaid}",
                      file=sys.stderr)  # fmt: skip
        return JOIN_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"jupyter-tfgpu: cannot run the kernel command {command[0]!r}: {err}",
              file=sys.stderr)  # fmt: skip
        return EXEC_FAILED
    return EXEC_FAILED  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

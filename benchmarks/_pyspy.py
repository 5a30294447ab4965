"""py-spy for the benchmark scripts: a process's stacks recorded, and where it spent its time."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any


# Frames every sample of the server passes through: left out of the top-frames list.
_SCAFFOLDING = (
    "<module>", "main (serve_fake", "launch_instance", "start_ioloop", "ServerApp.start ",
    "run_forever", "_run_once", "BaseAsyncIOLoop.start", "Thread._bootstrap", "Thread.run ",
    "Handle._run",
)  # fmt: skip


def _scaffolding(frame: str) -> bool:
    return any(mark in frame for mark in _SCAFFOLDING)


class PySpy:
    """py-spy recording one process (raw collapsed stacks, idle samples dropped), if installed."""

    def __init__(self, pid: int, out: Path, max_seconds: float = 600, rate: int = 200):
        self.pid, self.out, self.max_seconds, self.rate = pid, Path(out), max_seconds, rate
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PySpy":
        import shutil

        exe = shutil.which("py-spy")
        if exe is None:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                "--nonblocking", "--threads", "--format", "raw", "-o", str(self.out),
                "--duration", str(int(self.max_seconds)),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def summary(self, top: int = 12) -> dict[str, Any]:
        """Share of on-CPU samples by package (leaf frame) and the top inclusive frames."""
        import collections
        import re

        if not self.out.exists():
            return {"available": False}
        total = 0
        by_package: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in stack.split(";")[1:]]
            leaf = frames[-1] if frames else ""
            for package in ("jupyter_tfgpu", "fake_pynvml", "jupyter_server", "tornado", "asyncio", "logging"):
                if f"{package}/" in leaf or f"{package}." in leaf or f"/{package}" in leaf:
                    by_package[package] += n
                    break
            else:
                by_package["other"] += n
            for frame in set(frames):
                inclusive[frame] += n
        pct = lambda n: round(100 * n / total, 1) if total else None  # noqa: E731
        return {
            "samples": total,
            "self_pct_by_package": {k: pct(v) for k, v in by_package.most_common()},
            "top_inclusive_pct": {
                k: pct(v)
                for k, v in [kv for kv in inclusive.most_common() if not _scaffolding(kv[0])][:top]
            },
            "raw": str(self.out),
        }

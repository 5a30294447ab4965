"""The report: one entry per check, the machine's record, the verdict and the keys' order."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

MiB = 2**20
GiB = 2**30
# Bulky parts first, verdict last: a terminal or a log tail shows the verdict.
ORDER = (
    "check",
    "started",
    "backend",
    "dry_run",
    "server_log_tail",
    "machine",
    "server",
    "kernel_python",
    "baseline",
    "hard_caps",
    "checks",
    "cleanup",
    "duration_s",
    "errors",
    "summary",
    "result",
)


def mib(value: float | None) -> float | None:
    """Bytes as MiB with one decimal, for the report."""
    return None if value is None else round(value / MiB, 1)


class Check:
    """One report entry: expectations that held or not, what was measured, why skipped."""

    def __init__(self, number: int, method: Any):
        what = " ".join(method.__doc__.split()).split(") ", 1)[-1]
        name = method.__name__.removeprefix("check_")
        self.entry: dict[str, Any] = {"id": number, "name": name, "what": what, "status": None}
        self.expectations: list[dict[str, Any]] = []
        self.measured: dict[str, Any] = {}
        self.skipped: list[str] = []
        self.error: str | None = None

    def expect(self, what: str, ok: Any, **values: Any) -> bool:
        """Record one expectation."""
        self.expectations.append({"what": what, "ok": bool(ok), **values})
        return bool(ok)

    def skip(self, reason: str) -> None:
        """A part that cannot run here, and why."""
        self.skipped.append(reason)

    def finish(self, seconds: float) -> dict[str, Any]:
        """The entry, with status pass / fail / skipped."""
        failed = self.error is not None or any(not e["ok"] for e in self.expectations)
        if failed:
            status = "fail"
        elif self.skipped:
            status = "skipped"
        else:
            status = "pass" if self.expectations else "fail"
        self.entry.update(status=status, seconds=round(seconds, 1), expectations=self.expectations)
        if self.skipped:
            self.entry["skipped"] = self.skipped
        if self.measured:
            self.entry["measured"] = self.measured
        if self.error:
            self.entry["error"] = self.error
        return self.entry


def machine_info(context: str | None) -> dict[str, Any]:
    """Python and platform; nvidia-smi's and the wheel install's records from gpu-check.sh."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
    }
    if not context:
        return info
    folder = Path(context)

    def read(name: str) -> str | None:
        try:
            return (folder / name).read_text(errors="replace").strip()
        except OSError:
            return None

    listing = read("nvidia-smi-L.txt")
    if listing is not None:
        info["nvidia_smi_L"] = listing.splitlines()
    query = read("nvidia-smi-query.csv")
    if query:
        fields = ("name", "driver_version", "memory_total", "cuda_version")
        info["gpus"] = [
            dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in query.splitlines()
        ]
        info["driver"] = info["gpus"][0].get("driver_version")
    if read("nvidia-smi-error.txt"):
        info["nvidia_smi_error"] = read("nvidia-smi-error.txt")
    plan = read("wheel-plan.json")
    if plan:
        decisions = json.loads(plan)
        info["wheels"] = {
            "installed": " ".join(
                d["wheel"].split("-")[0] for d in decisions if d["action"].startswith("install")
            ),
            "from_image": {
                d["wheel"].split("-")[0]: d["image_version"]
                for d in decisions
                if d["action"].startswith("skip")
            },
            "shadowed": [d for d in decisions if d["action"].startswith("install (")],
        }
    rc = read("install-rc")
    if rc not in (None, "0"):
        info["install_rc"] = rc
        info["install_log_tail"] = (read("install.log") or "").splitlines()[-20:]
    return info


def conclude(
    report: dict[str, Any],
    errors: list[str],
    simulated: bool,
    duration: float,
    server_log_tail: list[str],
) -> dict[str, Any]:
    """The finished report: summary, result and errors added, keys in ``ORDER``."""
    counts = {
        s: sum(1 for e in report["checks"] if e["status"] == s) for s in ("pass", "fail", "skipped")
    }
    report["summary"] = counts
    if errors or counts["fail"]:
        report["result"] = "fail"
    elif counts["skipped"] and not simulated:
        report["result"] = "incomplete"
    else:
        report["result"] = "pass"
    report["duration_s"] = round(duration, 1)
    if errors:
        report["errors"] = errors
    if errors or counts["fail"]:
        report["server_log_tail"] = server_log_tail
    return {key: report[key] for key in ORDER if key in report}

"""The record of what this process applied, shared with the server through ``TFGPU_RECORD_DIR``.

Holds the policy in force (read from the environment on first use, or replaced by ``apply_now``),
the errors (the first one announced once on stderr, prefixed ``jupyter-tfgpu:``), and writes the
record to ``$TFGPU_RECORD_DIR/<pid>.json`` after each change. All of it lives in ``STATE``.
"""

from __future__ import annotations

import os
import sys
import time

import tfgpu_report
from tfgpu_policy import load_policy
from tfgpu_protocol import POLICY_ENV, RECORD_DIR_ENV
from tfgpu_state import STATE


def current_policy() -> dict | None:
    """The policy from the environment, parsed on first use; problems are reported once."""
    with STATE.lock:
        if not STATE.policy_loaded:
            set_policy(os.environ.get(POLICY_ENV), None)
        return STATE.policy


def set_policy(raw: str | None, framework: str | None) -> None:
    """Replace the policy in force with ``raw`` (a TFGPU_POLICY value); record its problems."""
    with STATE.lock:
        STATE.policy_loaded = True
        STATE.policy, problems = load_policy(raw)
        STATE.policy_note = None
        if STATE.policy is None:
            STATE.policy_note = (
                "the policy could not be read (see errors)" if problems else "no policy set"
            )
    for problem in problems:
        error(framework, problem + ("" if STATE.policy else "; no GPU policy applied"), write=False)


def record() -> dict:
    """What this process applied: pid, policy, per-framework applied / skipped, errors (a copy)."""
    import json

    policy = current_policy()
    reporter = report_status()
    with STATE.lock:
        data = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "policy": policy,
            "frameworks": STATE.frameworks,
            "errors": STATE.errors,
            "reporter": reporter,
        }
        return json.loads(json.dumps(data, default=repr))


def report_status() -> dict:
    """This process's GPU memory reporter: running, why not, reports sent, last answer."""
    try:
        return tfgpu_report.status()
    except Exception as exc:
        return {"running": False, "reason": f"reporter unavailable ({type(exc).__name__})"}


def write_record() -> None:
    """Write the record to $TFGPU_RECORD_DIR/<pid>.json: temp file (0600), then rename."""
    directory = os.environ.get(RECORD_DIR_ENV)
    if not directory or STATE.record_failed:
        return
    import json

    tmp = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        pid = os.getpid()
        tmp = os.path.join(directory, f".{pid}.{time.monotonic_ns()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # the umask could only have narrowed it; be explicit
            json.dump(record(), fh, sort_keys=True)
        os.replace(tmp, os.path.join(directory, f"{pid}.json"))
    except Exception as exc:
        STATE.record_failed = True  # once: a read-only or missing disk must not spam every import
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        error(None, f"could not write the record to {directory} ({type(exc).__name__}: {exc})")


def error(framework: str | None, message: str, write: bool = True, announce: bool = True) -> None:
    """Record a failure, say so once on stderr (the first announced one), and keep going."""
    with STATE.lock:
        STATE.errors.append(
            {"framework": framework, "message": message, "at": round(time.time(), 3)}
        )
        first = announce and not STATE.warned
        STATE.warned = STATE.warned or announce
    if first:
        where = f"{framework}: " if framework else ""
        try:
            sys.stderr.write(
                f"jupyter-tfgpu: {where}{message}. Your code runs on; details and any later "
                f"problems in tfgpu_bootstrap.record()['errors'] (pid {os.getpid()}).\n"
            )
            sys.stderr.flush()
        except Exception:
            pass
    if write:
        write_record()

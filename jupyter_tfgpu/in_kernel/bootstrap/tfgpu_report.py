"""Tells the server how much GPU memory this process's frameworks hold, in their own figures.

Inside a container NVML reports host PIDs, which the server cannot map to its kernels. So each
Python process of a kernel whose framework has initialized a GPU posts that framework's allocator
figures (read by ``tfgpu_figures``) to ``{TFGPU_SERVER_URL}tfgpu/api/kernel/report`` every
``TFGPU_REPORT_INTERVAL`` seconds (default 5), with the kernel's own token, and the server matches
them to the unknown PIDs.

``tfgpu_apply`` hands each imported framework to ``framework_imported``, with the way to note a
failure in the bootstrap's record; one daemon thread per process then only looks: it never
imports a framework and never initializes a GPU, so a process that does not use a GPU never
sends anything. It stops for good when the server answers 403 or 404 (the token was revoked at a
restart, or the server is gone) and backs off up to a minute while the server cannot be reached.
Failures never reach user code: they show in ``status()`` and as one line in
``tfgpu_bootstrap.record()['errors']``. The token is read from the environment when a report is
sent and is never printed, logged or put into an error message. All of the reporter's state is
``REPORTER``.
"""

from __future__ import annotations

import os
import sys
import threading

from tfgpu_figures import GPU_PLATFORMS, PROBES
from tfgpu_protocol import (
    AUTH_SCHEME,
    KERNEL_TOKEN_ENV,
    REPORT_INTERVAL_ENV,
    REPORTING_FRAMEWORKS,
    SERVER_URL_ENV,
)

__all__ = ["REPORTER", "collect", "framework_imported", "send_once", "status"]

ROUTE = "tfgpu/api/kernel/report"
DEFAULT_INTERVAL = 5.0
MAX_BACKOFF = 60.0
TIMEOUT = 5.0
# Answers after which sending again cannot help: token revoked (403), server or route gone (404).
FINAL = (403, 404)
NOT_A_KERNEL = f"{SERVER_URL_ENV} or {KERNEL_TOKEN_ENV} is not set (not a jupyter-tfgpu kernel)"


class Reporter:
    """This process's reporter: the frameworks it watches, its thread, what ``status()`` says."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.modules: dict = {}  # framework name -> module, as the import hook handed it in
        self.thread = None
        self.stop = threading.Event()
        self.noted: set = set()  # kinds of failure already noted in the bootstrap record
        self.note = None  # writes a failure into the bootstrap record (given by tfgpu_apply)
        self.opener = None  # urllib's opener, built on the first report
        self.status = {
            "running": False,
            "reason": "no framework imported yet",
            "watching": [],
            "reporting": [],
            "sent": 0,
            "failures": 0,
            "last_status": None,
            "last_error": None,
            "interval": None,
            "retry_in": None,
            "stopped": False,
        }


REPORTER = Reporter()


def status() -> dict:
    """The reporter of this process: running, why not, reports sent, the last answer (a copy)."""
    with REPORTER.lock:
        data = dict(REPORTER.status, pid=os.getpid())
        data["watching"] = sorted(REPORTER.modules)
        data["reporting"] = list(REPORTER.status["reporting"])
        thread = REPORTER.thread
        data["running"] = bool(
            REPORTER.status["running"] and thread is not None and thread.is_alive()
        )
    return data


# -- starting ------------------------------------------------------------------------------------


def framework_imported(name: str, module, note=None) -> bool:
    """Watch a framework the user imported; start the thread if this process can report.

    ``note(message)`` writes a failure of the reporter into the bootstrap's record.
    """
    with REPORTER.lock:
        REPORTER.modules[name] = module
        if note is not None:
            REPORTER.note = note
        if REPORTER.thread is not None or REPORTER.status["stopped"]:
            return False
        reason = _channel_problem() or _no_gpu_build(name, module)
        if reason is not None:
            # A later framework may still be built for GPUs: keep the first channel reason.
            REPORTER.status["reason"] = reason
            return False
        interval = _interval()
        REPORTER.status.update(running=True, reason=None, interval=interval)
        REPORTER.thread = threading.Thread(
            target=_run, args=(interval,), name="tfgpu-report", daemon=True
        )
        REPORTER.thread.start()
        return True


def _channel_problem() -> str | None:
    """Why this process cannot report at all, or None."""
    if not os.environ.get(SERVER_URL_ENV) or not os.environ.get(KERNEL_TOKEN_ENV):
        return NOT_A_KERNEL
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # CUDA stops at the first invalid entry: "" or "-1" first hides every GPU.
    if visible is not None and visible.split(",")[0].strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return None


def _no_gpu_build(name: str, module) -> str | None:
    """Why this framework can never hold GPU memory in this process, or None (maybe it can)."""
    if name == "tensorflow":
        info = getattr(sys.modules.get("tensorflow.python.platform.build_info"), "build_info", None)
        if isinstance(info, dict) and not (info.get("is_cuda_build") or info.get("is_rocm_build")):
            return "tensorflow is a CPU-only build"
    elif name == "torch":
        version = getattr(module, "version", None)
        if version is not None and not (
            getattr(version, "cuda", None) or getattr(version, "hip", None)
        ):
            return "torch is a CPU-only build"
    elif name == "jax":
        platforms = os.environ.get("JAX_PLATFORMS", "").strip()
        if platforms and not any(p.strip() in GPU_PLATFORMS for p in platforms.split(",")):
            return f"JAX_PLATFORMS={platforms!r} has no GPU platform"
    return None


def _interval() -> float:
    try:
        value = float(os.environ.get(REPORT_INTERVAL_ENV) or DEFAULT_INTERVAL)
    except ValueError:
        return DEFAULT_INTERVAL
    return max(0.05, value) if value == value and value != float("inf") else DEFAULT_INTERVAL


def _after_fork() -> None:
    """A forked child has no reporter thread (and may have inherited a held lock)."""
    REPORTER.lock = threading.Lock()
    REPORTER.stop = threading.Event()
    REPORTER.thread = None
    REPORTER.status.update(
        running=False, reason="forked child: no reporter", reporting=[], retry_in=None
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# -- the thread ------------------------------------------------------------------------------------


def _run(interval: float) -> None:
    delay = interval
    try:
        while not REPORTER.stop.wait(delay):
            found = collect()
            with REPORTER.lock:
                REPORTER.status["reporting"] = [name for name, _ in found]
            delay = interval
            for framework, devices in found:
                delay = _send_round(framework, devices, interval)
                if delay is None:
                    return
                if delay != interval:
                    break  # the server is unreachable: try again later, not once per framework
    except Exception as exc:  # never let a failure of ours reach the user's process
        _stopped(f"reporter stopped ({type(exc).__name__})")
    finally:
        with REPORTER.lock:
            REPORTER.status["running"] = False


def _send_round(framework: str, devices: list, interval: float) -> float | None:
    """Send one report; the next delay, or None to stop for good."""
    try:
        code = send_once(framework, devices)
    except ConnectionError as exc:
        with REPORTER.lock:
            retry = min(MAX_BACKOFF, max(interval, REPORTER.status["retry_in"] or interval / 2) * 2)
            REPORTER.status["retry_in"] = retry
        _note("unreachable", f"{exc}; retrying with backoff (at most {MAX_BACKOFF:.0f} s)")
        return retry
    if code in FINAL:
        what = "revoked the token" if code == 403 else "has no report route"
        _stopped(f"the server {what} (HTTP {code}); reporter stopped")
        return None
    if 200 <= code < 300:
        with REPORTER.lock:
            REPORTER.status["retry_in"] = None
        return interval
    if code >= 500 or code == 429:
        # 429: the server limits reports per kernel; slowing down is the answer, not stopping.
        with REPORTER.lock:
            retry = min(MAX_BACKOFF, max(interval, REPORTER.status["retry_in"] or interval / 2) * 2)
            REPORTER.status["retry_in"] = retry
        kind = "rate limited" if code == 429 else "server error"
        _note(kind, f"the server answered HTTP {code}; retrying with backoff")
        return retry
    _stopped(f"the server refused the report (HTTP {code}); reporter stopped")
    return None


def _stopped(message: str) -> None:
    with REPORTER.lock:
        REPORTER.status.update(
            running=False, stopped=True, reason=message, retry_in=None, reporting=[]
        )
    _note("stopped", message)


def _note(kind: str, message: str) -> None:
    """One line in the bootstrap record per kind of failure; nothing on stdout or stderr."""
    with REPORTER.lock:
        if kind in REPORTER.noted:
            return
        REPORTER.noted.add(kind)
        note = REPORTER.note
    if note is not None:
        try:
            note(message)
        except Exception:
            pass


# -- reading the frameworks, without side effects --------------------------------------------------


def collect() -> list:
    """(framework, devices) for each watched framework that has initialized a GPU."""
    with REPORTER.lock:
        modules = list(REPORTER.modules.items())
    found = []
    for name, module in modules:
        try:
            devices = PROBES[name](module)
        except Exception as exc:
            with REPORTER.lock:
                REPORTER.status["last_error"] = (
                    f"{name}: could not read its figures ({type(exc).__name__})"
                )
            continue
        if devices:
            found.append((name, devices))
    return found


# -- sending --------------------------------------------------------------------------------------


def send_once(framework_name: str, devices: list) -> int:
    """Build and POST one report now; returns the HTTP status (204 when the server stored it).

    Raises ValueError for an unknown framework, RuntimeError outside a jupyter-tfgpu kernel, and
    ConnectionError (naming only the kind of failure) when the server cannot be reached.
    """
    if framework_name not in REPORTING_FRAMEWORKS:
        names = ", ".join(REPORTING_FRAMEWORKS)
        raise ValueError(f"framework must be one of {names}, not {framework_name!r}")
    url = os.environ.get(SERVER_URL_ENV)
    if not url or not os.environ.get(KERNEL_TOKEN_ENV):
        raise RuntimeError(NOT_A_KERNEL)
    rows = [
        {
            "uuid": str(device["uuid"]),
            "reserved": device.get("reserved"),
            "in_use": device.get("in_use"),
            "peak": device.get("peak"),
        }
        for device in devices
    ]
    try:
        code, reason = _post(url, framework_name, rows)
    except ConnectionError as exc:
        with REPORTER.lock:
            REPORTER.status["failures"] += 1
            REPORTER.status["last_status"] = None
            REPORTER.status["last_error"] = str(exc)
        raise
    with REPORTER.lock:
        REPORTER.status["last_status"] = code
        if 200 <= code < 300:
            REPORTER.status["sent"] += 1
        else:
            REPORTER.status["failures"] += 1
            REPORTER.status["last_error"] = f"HTTP {code} {reason}".strip()
    return code


def _post(url: str, framework: str, rows: list) -> tuple:
    """(status, reason) of one POST; connection failures become a ConnectionError without detail."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"framework": framework, "pid": os.getpid(), "devices": rows}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/" + ROUTE,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": AUTH_SCHEME + " " + os.environ.get(KERNEL_TOKEN_ENV, ""),
        },
    )
    failure = None
    try:
        with _opener().open(request, timeout=TIMEOUT) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        code, reason = exc.code, str(exc.reason or "")
        exc.close()
        return code, reason
    except Exception as exc:  # URLError, timeouts, resets: keep only the kind
        failure = type(getattr(exc, "reason", None) or exc).__name__
    finally:
        del request  # the only object holding the token
    raise ConnectionError(f"jupyter-tfgpu server not reachable ({failure})")


def _opener():
    """urllib without proxies (the server is local) and without redirects (they would carry the
    Authorization header to wherever they point)."""
    if REPORTER.opener is None:
        import urllib.request

        class _NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        no_proxy = urllib.request.ProxyHandler({})
        REPORTER.opener = urllib.request.build_opener(no_proxy, _NoRedirect)
    return REPORTER.opener

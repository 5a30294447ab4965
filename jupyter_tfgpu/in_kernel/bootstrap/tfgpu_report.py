"""Tells the server how much GPU memory this process's frameworks hold, in their own figures.

Inside a container NVML reports host PIDs, which the server cannot map to its kernels. So each
Python process of a kernel whose framework has initialized a GPU posts that framework's allocator
figures to ``{TFGPU_SERVER_URL}tfgpu/api/kernel/report`` every ``TFGPU_REPORT_INTERVAL`` seconds
(default 5), with the kernel's own token, and the server matches them to the unknown PIDs.

``tfgpu_apply`` hands each imported framework to ``framework_imported``; one daemon thread per
process then only looks: it never imports a framework and never initializes a GPU, so a process
that does not use a GPU never sends anything. It stops for good when the server answers 403 or
404 (the token was revoked at a restart, or the server is gone) and backs off up to a minute
while the server cannot be reached. Failures never reach user code: they show in ``status()``
and as one line in ``tfgpu_bootstrap.record()['errors']``. The token is read from the
environment when a report is sent and is never printed, logged or put into an error message.
"""

from __future__ import annotations

import os
import sys
import threading

from tfgpu_bootstrap import (
    AUTH_SCHEME,
    KERNEL_TOKEN_ENV,
    REPORT_INTERVAL_ENV,
    REPORTING_FRAMEWORKS,
    SERVER_URL_ENV,
)

__all__ = ["FRAMEWORKS", "collect", "device_id", "framework_imported", "send_once", "status"]

FRAMEWORKS = REPORTING_FRAMEWORKS
ROUTE = "tfgpu/api/kernel/report"
DEFAULT_INTERVAL = 5.0
MAX_BACKOFF = 60.0
TIMEOUT = 5.0
# Answers after which sending again cannot help: token revoked (403), server or route gone (404).
FINAL = (403, 404)
GPU_PLATFORMS = ("cuda", "rocm", "gpu")  # JAX backend names that mean a GPU
NOT_A_KERNEL = f"{SERVER_URL_ENV} or {KERNEL_TOKEN_ENV} is not set (not a jupyter-tfgpu kernel)"

_lock = threading.Lock()
_modules: dict = {}  # framework name -> module, as the import hook handed it in
_thread = None
_stop = threading.Event()
_noted: set = set()  # kinds of failure already written to the bootstrap record
_opener_cache: list = []
_state = {
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


def status() -> dict:
    """The reporter of this process: running, why not, reports sent, the last answer (a copy)."""
    with _lock:
        data = dict(_state, pid=os.getpid())
        data["watching"] = sorted(_modules)
        data["reporting"] = list(_state["reporting"])
        data["running"] = bool(_state["running"] and _thread is not None and _thread.is_alive())
    return data


# -- starting ------------------------------------------------------------------------------------


def framework_imported(name: str, module) -> bool:
    """Watch a framework the user imported; start the thread if this process can report."""
    global _thread
    with _lock:
        _modules[name] = module
        if _thread is not None or _state["stopped"]:
            return False
        reason = _channel_problem() or _no_gpu_build(name, module)
        if reason is not None:
            # A later framework may still be built for GPUs: keep the first channel reason.
            _state["reason"] = reason
            return False
        interval = _interval()
        _state.update(running=True, reason=None, interval=interval)
        _thread = threading.Thread(target=_run, args=(interval,), name="tfgpu-report", daemon=True)
        _thread.start()
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
    global _lock, _thread, _stop
    _lock = threading.Lock()
    _stop = threading.Event()
    _thread = None
    _state.update(running=False, reason="forked child: no reporter", reporting=[], retry_in=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# -- the thread ------------------------------------------------------------------------------------


def _run(interval: float) -> None:
    delay = interval
    try:
        while not _stop.wait(delay):
            found = collect()
            with _lock:
                _state["reporting"] = [name for name, _ in found]
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
        with _lock:
            _state["running"] = False


def _send_round(framework: str, devices: list, interval: float) -> float | None:
    """Send one report; the next delay, or None to stop for good."""
    try:
        code = send_once(framework, devices)
    except ConnectionError as exc:
        with _lock:
            retry = min(MAX_BACKOFF, max(interval, _state["retry_in"] or interval / 2) * 2)
            _state["retry_in"] = retry
        _note("unreachable", f"{exc}; retrying with backoff (at most {MAX_BACKOFF:.0f} s)")
        return retry
    if code in FINAL:
        what = "revoked the token" if code == 403 else "has no report route"
        _stopped(f"the server {what} (HTTP {code}); reporter stopped")
        return None
    if 200 <= code < 300:
        with _lock:
            _state["retry_in"] = None
        return interval
    if code >= 500 or code == 429:
        # 429: the server limits reports per kernel; slowing down is the answer, not stopping.
        with _lock:
            retry = min(MAX_BACKOFF, max(interval, _state["retry_in"] or interval / 2) * 2)
            _state["retry_in"] = retry
        kind = "rate limited" if code == 429 else "server error"
        _note(kind, f"the server answered HTTP {code}; retrying with backoff")
        return retry
    _stopped(f"the server refused the report (HTTP {code}); reporter stopped")
    return None


def _stopped(message: str) -> None:
    with _lock:
        _state.update(running=False, stopped=True, reason=message, retry_in=None, reporting=[])
    _note("stopped", message)


def _note(kind: str, message: str) -> None:
    """One line in the bootstrap record per kind of failure; nothing on stdout or stderr."""
    with _lock:
        if kind in _noted:
            return
        _noted.add(kind)
    recorder = sys.modules.get("tfgpu_record")
    if recorder is not None:
        try:
            recorder.error(None, f"GPU memory reporter: {message}", announce=False)
        except Exception:
            pass


# -- reading the frameworks, without side effects --------------------------------------------------


def collect() -> list:
    """(framework, devices) for each watched framework that has initialized a GPU."""
    with _lock:
        modules = list(_modules.items())
    found = []
    for name, module in modules:
        try:
            devices = PROBES[name](module)
        except Exception as exc:
            with _lock:
                _state["last_error"] = f"{name}: could not read its figures ({type(exc).__name__})"
            continue
        if devices:
            found.append((name, devices))
    return found


def _tensorflow(tf) -> list | None:
    """Figures of TensorFlow's logical GPUs, once its eager context has initialized its devices."""
    context = sys.modules.get("tensorflow.python.eager.context")
    # The module global, not context(): that would create the context object if there is none.
    ctx = getattr(context, "_context", None)
    if ctx is None or getattr(ctx, "_context_handle", None) is None:
        return None
    rows = []
    for position, device in enumerate(tf.config.list_logical_devices("GPU")):
        index = _trailing_index(getattr(device, "name", ""), position)
        info = tf.config.experimental.get_memory_info(f"GPU:{index}")
        # TensorFlow does not expose what its allocator reserved: in use and peak only.
        rows.append(_row(index, None, info.get("current"), info.get("peak")))
    return rows


def _torch(torch) -> list | None:
    """Figures of each CUDA device torch has used, once torch initialized CUDA."""
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return None
    current = cuda.current_device()
    rows = []
    for index in range(cuda.device_count()):
        reserved = cuda.memory_reserved(index)
        peak = cuda.max_memory_reserved(index)
        if index == current or reserved or peak:
            rows.append(_row(index, reserved, cuda.memory_allocated(index), peak))
    return rows


def _jax(jax) -> list | None:
    """Figures of JAX's GPU devices, only if its GPU backend was already created."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    backends = getattr(bridge, "_backends", None)
    if not isinstance(backends, dict):
        return None
    rows = []
    for platform, client in list(backends.items()):
        if platform not in GPU_PLATFORMS:
            continue
        for position, device in enumerate(client.local_devices()):
            stats = device.memory_stats() or {}
            index = getattr(device, "local_hardware_id", None)
            index = index if isinstance(index, int) else position
            rows.append(
                _row(
                    index,
                    stats.get("pool_bytes"),
                    stats.get("bytes_in_use"),
                    stats.get("peak_bytes_in_use"),
                )
            )
    return rows


PROBES = {"tensorflow": _tensorflow, "torch": _torch, "jax": _jax}


def _trailing_index(name: str, default: int) -> int:
    tail = str(name).rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else default


def _bytes(value) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _row(index: int, reserved, in_use, peak) -> dict:
    return {
        "uuid": device_id(index),
        "reserved": _bytes(reserved),
        "in_use": _bytes(in_use),
        "peak": _bytes(peak),
    }


def device_id(index: int) -> str:
    """The server's name for this process's CUDA device ``index``: a UUID where known."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")] if visible else []
    entry = entries[index] if index < len(entries) else ""
    if entry and not entry.isdigit():
        return entry  # the provisioner's UUIDs (GPU-... or MIG-...)
    uuid = _torch_uuid(index)
    if uuid:
        return uuid  # an index may count in another order than NVML's; a UUID cannot
    return entry or str(index)


def _torch_uuid(index: int) -> str | None:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is None or not cuda.is_initialized():  # get_device_properties would init CUDA
            return None
        uuid = getattr(cuda.get_device_properties(index), "uuid", None)
    except Exception:
        return None
    if not uuid:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


# -- sending --------------------------------------------------------------------------------------


def send_once(framework_name: str, devices: list) -> int:
    """Build and POST one report now; returns the HTTP status (204 when the server stored it).

    Raises ValueError for an unknown framework, RuntimeError outside a jupyter-tfgpu kernel, and
    ConnectionError (naming only the kind of failure) when the server cannot be reached.
    """
    if framework_name not in FRAMEWORKS:
        names = ", ".join(FRAMEWORKS)
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
        with _lock:
            _state["failures"] += 1
            _state["last_status"] = None
            _state["last_error"] = str(exc)
        raise
    with _lock:
        _state["last_status"] = code
        if 200 <= code < 300:
            _state["sent"] += 1
        else:
            _state["failures"] += 1
            _state["last_error"] = f"HTTP {code} {reason}".strip()
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
    if not _opener_cache:
        import urllib.request

        class _NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        no_proxy = urllib.request.ProxyHandler({})
        _opener_cache.append(urllib.request.build_opener(no_proxy, _NoRedirect))
    return _opener_cache[0]

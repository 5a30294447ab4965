"""This machine's GPUs read straight from NVML, for a kernel the server did not start.

The answer has the shape of the server's ``kernel/status`` (``available``, ``reason``, ``gpus``
with ``memory``, ``utilization`` and ``processes`` marked ``mine``), so one renderer shows both.
Any query a GPU does not support is ``None``; no NVML error reaches the user.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _own_pids() -> set[int]:
    """This process and its descendants (``!python train.py``), where psutil can tell."""
    pids = {os.getpid()}
    try:
        import psutil

        pids.update(child.pid for child in psutil.Process().children(recursive=True))
    except Exception:  # noqa: BLE001, S110 - psutil missing or the tree changed: own PID only
        pass
    return pids


def local_status() -> dict[str, Any]:
    """A ``kernel/status``-shaped snapshot of the local GPUs, or why there is none."""
    answer: dict[str, Any] = {
        "available": False,
        "reason": None,
        "simulated": False,
        "timestamp": time.time(),
        "gpus": [],
        "kernel": None,
        "local": True,
    }
    try:
        import pynvml
    except ImportError:
        answer["reason"] = "nvidia-ml-py (pynvml) is not installed"
        return answer
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        answer["reason"] = _text(exc) or type(exc).__name__
        return answer
    try:
        mine = _own_pids()

        def optional(call: Callable[..., Any], *args: Any) -> Any:
            try:
                return call(*args)
            except Exception:  # noqa: BLE001 - NotSupported and friends: unknown
                return None

        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = optional(pynvml.nvmlDeviceGetMemoryInfo, handle)
            rates = optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
            procs = optional(pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
            answer["gpus"].append(
                {
                    "index": index,
                    "uuid": _text(optional(pynvml.nvmlDeviceGetUUID, handle) or ""),
                    "name": _text(optional(pynvml.nvmlDeviceGetName, handle) or "GPU"),
                    "memory": None
                    if memory is None
                    else {"total": memory.total, "used": memory.used, "free": memory.free},
                    "utilization": None
                    if rates is None
                    else {"gpu": rates.gpu, "memory": rates.memory},
                    "processes": [
                        {
                            "pid": proc.pid,
                            "used_memory": _used(getattr(proc, "usedGpuMemory", None)),
                            "kernel_id": None,
                            "notebook": None,
                            "mine": proc.pid in mine,
                        }
                        for proc in procs
                    ],
                }
            )
        answer["available"] = bool(answer["gpus"])
        answer["reason"] = None if answer["gpus"] else "NVML sees no GPU"
    except Exception as exc:  # noqa: BLE001 - a GPU that fails is reported, never raised
        answer["reason"] = f"NVML failed ({_text(exc) or type(exc).__name__})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - nothing to do about it
            pass
    return answer


def _used(value: Any) -> int | None:
    # pynvml reports "not available" as None or as NVML_VALUE_NOT_AVAILABLE (2**64 - 1).
    return value if isinstance(value, int) and 0 <= value < 2**63 else None

"""Each framework's GPU memory figures in this process, read without side effects.

Used by the GPU memory reporter (``tfgpu_report``): nothing here imports a framework or
initializes a GPU. A framework that has not set up a GPU yet has no figures (None).
"""

from __future__ import annotations

import os
import sys

GPU_PLATFORMS = ("cuda", "rocm", "gpu")  # JAX backend names that mean a GPU


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

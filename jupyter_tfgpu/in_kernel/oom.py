"""Which errors are a GPU running out of memory, in TensorFlow, PyTorch or JAX, and what they say.

An error is recognised by the names of its classes (module and class name, along its MRO), never
by importing a framework: the notebook may not have imported it, and the hook that asks runs in
every kernel. The names cover the versions in use: TensorFlow's ``ResourceExhaustedError``
(``tensorflow.python.framework.errors_impl``), PyTorch's ``OutOfMemoryError`` (``torch.cuda``
before 2.4, ``torch`` since), JAX's ``XlaRuntimeError`` / ``JaxRuntimeError`` (``jaxlib``,
``jax.errors``) whose message starts with ``RESOURCE_EXHAUSTED``. An error raised from one of
them (a library wrapping it, ``raise ... from``) is recognised through ``__cause__`` and the
``__context__`` Python shows.

The GPU an error names is numbered as the process sees its GPUs; ``locate`` maps it through
``CUDA_VISIBLE_DEVICES`` (indices, UUIDs, MIG UUIDs) to the server's GPU.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from jupyter_tfgpu.in_kernel.units import GiB, MiB

LABELS = {"tensorflow": "TensorFlow", "torch": "PyTorch", "jax": "JAX"}
# Per framework: its packages, and the names of its out-of-memory classes in them; any class
# along the error's MRO may match.
OOM_CLASSES = {
    "tensorflow": (("tensorflow",), ("ResourceExhaustedError",)),
    "torch": (("torch",), ("OutOfMemoryError",)),
    "jax": (("jax", "jaxlib"), ("XlaRuntimeError", "JaxRuntimeError")),
}
JAX_OOM_PREFIX = "RESOURCE_EXHAUSTED"
# PyTorch before 1.13 raised a plain RuntimeError; CUDA itself says the second one.
TORCH_OOM_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory")
MAX_CHAIN = 16  # errors followed along __cause__ / __context__

# Where each framework names the device, as the process numbers it (CUDA ordinals).
_GPU = (
    re.compile(r"/device:GPU:(\d+)"),  # TensorFlow
    re.compile(r"\bGPU_(\d+)_bfc\b"),  # TensorFlow's allocator
    re.compile(r"\bGPU (\d+)\b"),  # PyTorch: "GPU 0 has a total capacity", "(GPU 0; ..."
    re.compile(r"\bdevice ordinal (\d+)"),  # XLA
    re.compile(r"\b(?:cuda|gpu):(\d+)\b"),  # JAX devices, torch "cuda:0"
)
_CPU = re.compile(r"/device:CPU:\d+|\bon device cpu\b|\bTFRT_CPU_\d+\b", re.IGNORECASE)
_TORCH_ASKED = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) ([KMGT]iB|B)\b")
_XLA_ASKED = re.compile(r"allocate (?:request for [^(]*\()?(\d+) ?(?:B|bytes)\b")
_TF_ASKED = re.compile(r"tensor with shape\[([\d,\s]*)\] and type (\w+)")
_UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": GiB, "TiB": 1024 * GiB}
_DTYPE_BYTES = {
    "float": 4, "double": 8, "half": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int16": 2,
    "int32": 4, "int64": 8, "bool": 1, "complex64": 8, "complex128": 16,
}  # fmt: skip


@dataclass(frozen=True)
class OutOfMemory:
    """A GPU out-of-memory error found in what a cell raised."""

    framework: str  # a key of LABELS
    error: BaseException  # the framework's own error (the one raised, or one it came from)
    device: int | None  # the GPU the message names, as this process numbers them
    requested: int | None  # bytes the failed allocation asked for, where the message says
    wrapped: bool  # the error raised is another one, raised from this

    @property
    def label(self) -> str:
        """The framework as people name it."""
        return LABELS[self.framework]


def _names(error: BaseException) -> list[tuple[str, str]]:
    return [(getattr(c, "__module__", "") or "", c.__name__) for c in type(error).__mro__]


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - an error whose str() fails says nothing
        return ""


def framework_of(error: BaseException) -> str | None:
    """The framework whose GPU ran out of memory, if ``error`` itself says so (not its chain)."""
    names = _names(error)
    message = _message(error)
    for framework, (packages, classes) in OOM_CLASSES.items():
        if any(name in classes and _package(module) in packages for module, name in names):
            if framework == "jax" and not message.lstrip().startswith(JAX_OOM_PREFIX):
                return None  # every XLA error has this class; only this status is memory
            if _CPU.search(message):
                return None  # host memory, not a GPU's
            return framework
    if "torch" in sys.modules and isinstance(error, RuntimeError):
        if message.lstrip().startswith(TORCH_OOM_MESSAGES):
            return "torch"
    return None


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or during, as the traceback shows them."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo and len(seen) < MAX_CHAIN:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.append(current.__cause__)
        if not current.__suppress_context__:
            todo.append(current.__context__)
    return seen


def find_out_of_memory(error: BaseException) -> OutOfMemory | None:
    """The GPU out-of-memory error in what a cell raised, or None for any other error."""
    for depth, candidate in enumerate(chain(error)):
        framework = framework_of(candidate)
        if framework is not None:
            message = _message(candidate)
            return OutOfMemory(
                framework=framework,
                error=candidate,
                device=device_named(message),
                requested=requested_bytes(message),
                wrapped=depth > 0,
            )
    return None


def device_named(message: str) -> int | None:
    """The GPU an out-of-memory message names (the process's own numbering), if any."""
    for pattern in _GPU:
        match = pattern.search(message)
        if match:
            return int(match.group(1))
    return None


def requested_bytes(message: str) -> int | None:
    """What the failed allocation asked for, where the message says it."""
    if match := _TORCH_ASKED.search(message):
        return round(float(match.group(1)) * _UNITS.get(match.group(2), 1))
    if match := _XLA_ASKED.search(message):
        return int(match.group(1))
    if match := _TF_ASKED.search(message):
        size = _DTYPE_BYTES.get(match.group(2))
        dims = [d.strip() for d in match.group(1).split(",") if d.strip()]
        if size is None or not dims:
            return None
        total = size
        for dim in dims:
            total *= int(dim)
        return total
    return None


# -- which GPU --------------------------------------------------------------------------------


def _matches(gpu: dict[str, Any], entry: str) -> bool:
    """Whether a CUDA_VISIBLE_DEVICES entry (index, UUID or its prefix, MIG UUID) is this GPU."""
    entry = entry.strip()
    if not entry:
        return False
    if entry.isdigit():
        return gpu.get("index") == int(entry)
    uuids = [str(gpu.get("uuid") or "")]
    uuids += [str(m.get("uuid") or "") for m in ((gpu.get("mig") or {}).get("instances") or ())]
    return any(u and u.startswith(entry) for u in uuids)


def visible_gpus(gpus: list[dict[str, Any]], visible: str | None) -> list[dict[str, Any]] | None:
    """The GPUs this process sees, in its own numbering; None when CUDA_VISIBLE_DEVICES is unset."""
    if visible is None:
        return None
    seen = []
    for entry in visible.split(","):
        match = [gpu for gpu in gpus if _matches(gpu, entry)]
        if not match:
            break  # CUDA stops at the first entry it cannot use
        seen.append(match[0])
    return seen


def locate(
    oom: OutOfMemory, status: dict[str, Any], visible: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The GPU that ran out (a ``gpus`` row), and a remark when the error did not name it."""
    gpus = [g for g in status.get("gpus") or () if isinstance(g, dict)]
    seen = visible_gpus(gpus, visible)
    if oom.device is not None:
        order = seen if seen is not None else sorted(gpus, key=lambda g: g.get("index", 0))
        return (order[oom.device], None) if oom.device < len(order) else (None, None)
    mine = [g for g in gpus if any(p.get("mine") for p in g.get("processes") or ())]
    candidates = mine or seen or gpus
    if not candidates:
        return None, None
    fullest = min(candidates, key=lambda g: free_bytes(g) if free_bytes(g) is not None else 2**63)
    remark = (
        f"The error names no GPU; GPU {fullest.get('index')} is the fullest this kernel uses."
        if len(candidates) > 1
        else None
    )
    return fullest, remark


def free_bytes(gpu: dict[str, Any]) -> int | None:
    """A ``gpus`` row's free memory in bytes, if known."""
    memory = gpu.get("memory") or {}
    if memory.get("free") is not None:
        return memory["free"]
    if memory.get("total") is not None and memory.get("used") is not None:
        return max(0, memory["total"] - memory["used"])
    return None

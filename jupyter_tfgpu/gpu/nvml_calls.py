"""NVML's errors sorted by what they mean, and its versioned symbols probed once.

Every query of one GPU goes through ``NvmlCalls.optional`` or ``failed``: "not supported" is a
null, a lost GPU is ``GpuLost``, anything else a null with its reason (or, while a GPU's facts
are read, a GPU opened again later).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from jupyter_tfgpu.gpu.backend import BackendUnavailable, GpuLost
from jupyter_tfgpu.gpu.readings import MemoryReading

# Errors that mean "this field is not available here", not "something broke".
UNAVAILABLE = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
# Errors that mean the GPU itself stopped answering.
LOST = ("NVMLError_GpuIsLost", "NVMLError_Unknown")
# Any other error (a timeout, a driver reloading, a bug in the binding) is neither: it nulls the
# one field and says why, and the field is asked again when its group is next due (``failed``).


class FactUnreadable(GpuLost):
    """A static fact of one GPU could not be read (a timeout, say): the GPU is opened again
    later rather than kept with facts read half-way."""


def load_pynvml() -> Any:
    """Import pynvml at open time, so a missing package is a reason, not an ImportError."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise BackendUnavailable(f"nvidia-ml-py is not installed ({err})") from err


class NvmlCalls:
    """The pynvml module and the one error policy for its calls: what an error means, and which
    variant of a versioned symbol this driver has (probed once, then kept)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.memory_v2: bool | None = None  # whether memory info v2 works; None until probed

    def matches(self, err: BaseException, names: tuple[str, ...]) -> bool:
        """Whether ``err`` is one of the binding's error classes named."""
        return any(
            isinstance(err, cls)
            for cls in (getattr(self.nvml, name, None) for name in names)
            if isinstance(cls, type)
        )

    def describe(self, err: BaseException) -> str:
        """NVML's own words for its errors ("Timeout"); the type as well for anything else."""
        nvml_error = getattr(self.nvml, "NVMLError", None)
        if isinstance(nvml_error, type) and isinstance(err, nvml_error):
            return str(err)
        return f"{type(err).__name__}: {err}"

    def optional(
        self,
        index: int,
        fn: Callable[..., Any],
        *args: Any,
        errors: dict[str, str] | None = None,
        field: str = "",
    ) -> Any:
        """Call one NVML query; every failure goes through ``failed``."""
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - sorted out by failed
            return self.failed(index, err, getattr(fn, "__name__", "NVML call"), errors, field)

    def failed(
        self, index: int, err: Exception, call: str, errors: dict[str, str] | None, field: str
    ) -> None:
        """The one error policy for a query of one GPU.

        Unsupported -> ``None``; lost GPU -> ``GpuLost``; anything else -> ``None`` with the
        reason in ``errors[field]``, or, while a GPU's facts are read (``errors`` None),
        ``GpuLost``: facts read half-way would stick, so the GPU is opened again later.
        """
        if self.matches(err, UNAVAILABLE):
            return None
        if self.matches(err, LOST):
            raise GpuLost(index, str(err)) from err
        reason = f"{call}: {self.describe(err)}"
        if errors is None:
            raise FactUnreadable(index, reason) from err
        errors[field] = reason
        return None

    def mismatch_errors(self) -> tuple[type[BaseException], ...]:
        """What the binding raises for a symbol the library lacks (either class, by version)."""
        mismatch = getattr(self.nvml, "NVMLLibraryMismatchError", None)
        return (self.nvml.NVMLError, mismatch) if isinstance(mismatch, type) else (self.nvml.NVMLError,)

    def versioned(self, base: str) -> list[Callable[[Any], Any]]:
        """Newest variant first (v3, v2, then the plain name), skipping ones the binding lacks."""
        names = [f"{base}_v3", f"{base}_v2", base]
        return [getattr(self.nvml, n) for n in names if hasattr(self.nvml, n)]

    def memory(
        self,
        index: int,
        handle: Any,
        errors: dict[str, str] | None = None,
        field: str = "memory",
    ) -> MemoryReading | None:
        """Memory with the v2 struct (which separates driver-reserved memory) where present."""
        nvml = self.nvml
        if self.memory_v2 is not False and hasattr(nvml, "nvmlMemory_v2"):
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
            except Exception as err:  # noqa: BLE001 - sorted out below or by failed
                if not self.matches(
                    err, ("NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch")
                ):
                    return self.failed(index, err, "nvmlDeviceGetMemoryInfo_v2", errors, field)
                self.memory_v2 = False
            else:
                self.memory_v2 = True
                return MemoryReading(info.total, info.used, info.free, info.reserved)
        info = self.optional(
            index, nvml.nvmlDeviceGetMemoryInfo, handle, errors=errors, field=field
        )
        if info is None:
            return None
        return MemoryReading(info.total, info.used, info.free, None)

    def field_values(self, index: int, handle: Any, ids: list[Any]) -> list[Any] | None:
        """One nvmlDeviceGetFieldValues call; None where the driver cannot answer it at all."""
        fn = getattr(self.nvml, "nvmlDeviceGetFieldValues", None)
        if fn is None:
            return None
        try:
            return list(fn(handle, ids))
        except Exception as err:  # noqa: BLE001 - sorted out by failed (lost GPU raises)
            self.failed(index, err, "nvmlDeviceGetFieldValues", {}, "nvlink")
            return None

    def value(self, sample: Any) -> int | float | None:
        """A field value's number, by its type; None when the field did not answer."""
        nvml = self.nvml
        if sample.nvmlReturn != nvml.NVML_SUCCESS:
            return None
        name = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        }.get(sample.valueType, "siVal")
        return getattr(sample.value, name)

"""How a kernel's cap is enforced: one level per GPU it may use, and the kernel's overall level.

``LEVELS`` is the one definition of what each level means, stops and does not stop: the API's
descriptions, the docs' table (``docs/_tools/generate.py``) and the words the UI shows come
from it. ``MECHANISMS`` names what can hold a cap. A ``CapEnforcement`` is a member of the
kernel's ``Launch`` (``policy/launch.py``): decided once at start by the server's hard-caps
mechanism (``server/hardcaps/``), read by attributes, JSON only in ``to_json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Level:
    """One enforcement level: its name, the words the UI uses, and what it means."""

    name: str
    label: str  # what the lab, %tfgpu and the widgets call it
    meaning: str
    stops: str
    does_not_stop: str


# Strongest first: a kernel's overall level is the weakest of its GPUs'.
LEVELS: tuple[Level, ...] = (
    Level(
        "driver",
        "hard cap",
        "The NVIDIA driver refuses any allocation that would take the kernel's processes past "
        "the cap, and code in the kernel cannot lift the limit. Said only of a mechanism that a "
        "GPU run recorded in docs/gpu-validation.md has shown holding on that driver branch.",
        "Every allocator in the kernel's processes and the processes they start (TensorFlow, "
        "PyTorch, JAX, CuPy, Numba, raw CUDA), also after the notebook undid its framework "
        "settings; at the allocation itself, with no grace period.",
        "Processes that are not the kernel's (another server, a job from a terminal); the "
        "kernel's own out-of-memory error at its cap; GPU time (a cap is memory).",
    ),
    Level(
        "framework",
        "cooperative",
        "Settings the kernel's own code could undo hold it at the cap: the framework settings "
        "(TensorFlow's memory limit, PyTorch's memory fraction, JAX's memory fraction), or a "
        "driver limit that the kernel can lift through its own environment or that no GPU run "
        "has shown holding yet. Past the cap, the enforcer acts after its grace period (when "
        "TFGPU.enforcement is on).",
        "TensorFlow, PyTorch and JAX used as they come, at the cap; past the cap for longer "
        "than enforcement_grace, the enforcer's action.",
        "Code that changes the settings before the framework starts; allocators that read none "
        "of them (CuPy, Numba, raw CUDA); another notebook's out-of-memory error within the "
        "grace period.",
    ),
    Level(
        "none",
        "no cap",
        "Nothing limits the kernel's allocations: it has no cap, or no setting reaches its GPU "
        "work (a kernel another provisioner started; a non-Python kernel's own allocations). "
        "With a cap, only the enforcer acts, after its grace period.",
        "With a cap and enforcement on, the enforcer's action after the grace period; nothing "
        "before.",
        "Any allocation.",
    ),
)
LEVEL_NAMES: tuple[str, ...] = tuple(level.name for level in LEVELS)
_RANK = {name: rank for rank, name in enumerate(LEVEL_NAMES)}

# What can hold a kernel's cap, by the name the API gives it.
MECHANISMS: dict[str, str] = {
    "nvml_memory_limit": "NVML memory limits on the kernel's own cgroup (TFGPU.hard_caps 'nvml')",
    "mps": "MPS pinned device memory limits (TFGPU.hard_caps 'mps')",
    "framework_settings": "the framework settings in the kernel's environment and bootstrap",
}


def level(name: str) -> Level:
    """The level named ``name`` (KeyError for a name that is not one)."""
    return LEVELS[_RANK[name]]


def weakest(names: Iterable[str]) -> str | None:
    """The weakest of these levels; None when there are none."""
    return max(names, key=_RANK.__getitem__, default=None)


def _check(level_name: str, mechanism: str | None, reason: str | None) -> None:
    if level_name not in _RANK:
        raise ValueError(f"level {level_name!r} is not one of {', '.join(LEVEL_NAMES)}")
    if mechanism is not None and mechanism not in MECHANISMS:
        raise ValueError(f"mechanism {mechanism!r} is not one of {', '.join(MECHANISMS)}")
    if (reason is None) != (level_name == "driver"):
        raise ValueError("a reason says why a level is not driver: given for every other level")


@dataclass(frozen=True)
class GpuEnforcement:
    """How the cap is enforced on one GPU the kernel may use."""

    gpu: str  # as the launch names it: its UUID, or its index where none was known
    level: str
    mechanism: str | None  # a key of MECHANISMS; None when nothing holds it
    reason: str | None  # why it is not driver; None when it is

    def __post_init__(self) -> None:
        _check(self.level, self.mechanism, self.reason)

    def to_json(self) -> dict[str, Any]:
        """As ``applied.enforcement.gpus`` lists it."""
        return {
            "gpu": self.gpu,
            "level": self.level,
            "mechanism": self.mechanism,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class CapEnforcement:
    """How a kernel's cap is enforced: per GPU, and overall (the weakest of its GPUs)."""

    level: str
    mechanism: str | None  # that of the GPU the overall level comes from
    reason: str | None
    gpus: tuple[GpuEnforcement, ...] = ()

    def __post_init__(self) -> None:
        _check(self.level, self.mechanism, self.reason)

    @classmethod
    def of(cls, gpus: Iterable[GpuEnforcement]) -> CapEnforcement:
        """The kernel's enforcement from its GPUs': the weakest decides (the first such GPU
        gives the mechanism and reason). Needs at least one GPU: see ``without_gpus``."""
        gpus = tuple(gpus)
        worst = weakest(g.level for g in gpus)
        if worst is None:
            raise ValueError("no GPU: use CapEnforcement.without_gpus")
        first = next(g for g in gpus if g.level == worst)
        return cls(worst, first.mechanism, first.reason, gpus)

    @classmethod
    def without_gpus(cls, level_name: str, mechanism: str | None, reason: str) -> CapEnforcement:
        """A kernel that may use no GPU this server names (CPU only, or no GPU known)."""
        return cls(level_name, mechanism, reason, ())

    @property
    def label(self) -> str:
        """The overall level in the UI's words: "hard cap", "cooperative" or "no cap"."""
        return level(self.level).label

    def summary_json(self) -> dict[str, Any]:
        """The overall level alone: ``GET kernels/{id}``'s top-level ``enforcement``."""
        return {"level": self.level, "mechanism": self.mechanism, "reason": self.reason}

    def to_json(self) -> dict[str, Any]:
        """As ``applied.enforcement`` (and the kernel's TFGPU_POLICY) has it."""
        return {**self.summary_json(), "gpus": [gpu.to_json() for gpu in self.gpus]}

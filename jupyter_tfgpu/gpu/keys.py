"""The names one GPU goes by, so every reader of a GPU reading matches them alike."""

from __future__ import annotations

from jupyter_tfgpu.gpu.readings import GpuReading


def gpu_keys(gpu: GpuReading) -> frozenset[str]:
    """A GPU reading's UUID, its index as a string and its MIG instances' UUIDs.

    A kernel's reporter names a GPU by UUID where it knows one (a MIG instance's inside a MIG
    slice), else by its index.
    """
    return gpu.keys()

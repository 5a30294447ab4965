"""Operator settings: one Configurable whose traits' help texts are the admin manual."""

from __future__ import annotations

import os

from traitlets import Dict, Enum, Float, Int, List, TraitError, default, validate
from traitlets.config import Configurable

DEFAULT_SIMULATED_GPUS = [{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 2}]


class TFGPU(Configurable):
    """GPU monitoring and per-notebook GPU policies for this Jupyter server."""

    backend = Enum(
        ["auto", "nvml", "simulated", "none"],
        default_value="auto",
        help="""Where GPU readings come from.
        'auto': NVML when the NVIDIA library and a GPU are present, else no backend (the API
        then answers available=false with the reason). 'nvml': NVML only. 'simulated':
        labelled simulated GPUs (demos, binder, tests) whose per-process memory is the real
        resident memory of the kernels' process trees. 'none': GPU monitoring off.
        Environment variable: TFGPU_BACKEND.""",
    ).tag(config=True)

    @default("backend")
    def _default_backend(self):
        return os.environ.get("TFGPU_BACKEND", "auto")

    sample_interval = Float(
        1.0,
        min=0.1,
        help="""Seconds between two samples of the fast GPU fields (utilization, memory).
        One sampler per server serves every browser tab, websocket, REST call and metric.""",
    ).tag(config=True)

    history_seconds = Int(
        3600,
        min=0,
        help="""Seconds of history the server keeps in memory for the sparklines and
        GET gpus/history (bounded ring buffer; about 40 bytes per GPU per sample).""",
    ).tag(config=True)

    nvml_budget = Float(
        0.02,
        min=0.001,
        max=1.0,
        help="""Largest share of wall time the sampler may spend inside NVML calls
        (0.02 = 2%). NVML calls hold the driver lock that users' GPU work needs too; when
        measured calls are slow the sampler stretches its cadences to stay under this.""",
    ).tag(config=True)

    slow_interval = Float(
        5.0,
        min=0.1,
        help="""Seconds between readings of slow-changing fields (temperature, power, fan,
        clocks); stretched when NVML is slow.""",
    ).tag(config=True)

    process_interval = Float(
        5.0,
        min=0.1,
        help="""Seconds between readings of the GPU process lists (a few ms per GPU on real
        drivers); they are also read right after a kernel starts, restarts or stops.""",
    ).tag(config=True)

    pcie_interval = Float(
        2.0,
        min=0.1,
        help="""Seconds between PCIe throughput readings while a client watches them
        (each reading samples a counter for about 20 ms per direction per GPU). PCIe is not
        read at all while nobody asks for it.""",
    ).tag(config=True)

    simulated_gpus = List(
        Dict(),
        default_value=DEFAULT_SIMULATED_GPUS,
        help="""GPUs of the simulated backend: a list of {"name": str, "memory_gb": number,
        "count": int}. Example: [{"name": "Simulated A100 80GB", "memory_gb": 80, "count": 4}].""",
    ).tag(config=True)

    @validate("simulated_gpus")
    def _validate_simulated_gpus(self, proposal):
        for n, entry in enumerate(proposal["value"]):
            where = f"TFGPU.simulated_gpus[{n}]"
            unknown = set(entry) - {"name", "memory_gb", "count"}
            if unknown:
                raise TraitError(f"{where}: unknown keys {sorted(unknown)}")
            if not isinstance(entry.get("name", ""), str):
                raise TraitError(f"{where}.name must be a string")
            memory = entry.get("memory_gb", 16)
            if isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0:
                raise TraitError(f"{where}.memory_gb must be a positive number")
            count = entry.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 64:
                raise TraitError(f"{where}.count must be an integer from 0 to 64")
        return proposal["value"]

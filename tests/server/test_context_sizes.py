"""The CUDA context measured per GPU model and driver: NVML's figure for a kernel's process less
what its framework reported reserved, taken only where both figures mean what they say."""

from __future__ import annotations

import pytest

from jupyter_tfgpu.gpu import DeviceInfo, MigInstance
from jupyter_tfgpu.gpu.readings import GpuReading
from jupyter_tfgpu.policy.environment import STARTING_CONTEXT_MB
from jupyter_tfgpu.server.kernels.contexts import (
    KERNELS_KEPT,
    MAX_CONTEXT_BYTES,
    MODELS_KEPT,
    ContextSizes,
)

MIB = 2**20
DEVICES = [
    DeviceInfo(index=0, uuid="GPU-0", name="NVIDIA H200", memory_total=140 * 2**30),
    DeviceInfo(
        index=1,
        uuid="GPU-1",
        name="NVIDIA A100",
        memory_total=80 * 2**30,
        mig_mode=True,
        mig_instances=(MigInstance(0, "MIG-1a", 1, 0, 10 * 2**30),),
    ),
]


class Reports:
    """KernelReports.current as the table reads it: kernel id -> frameworks, devices, received."""

    def __init__(self):
        self.current = {}
        self.received = 0.0

    def put(self, kernel_id, held, frameworks=("jax",)):
        """A new report (received later than the last one) of ``held`` ({GPU key: bytes})."""
        self.received += 5.0
        self.current[kernel_id] = {
            "frameworks": list(frameworks),
            "devices": dict(held),
            "received": self.received,
        }


def gpu(index=0, name="NVIDIA H200", processes=(), stale=None) -> GpuReading:
    """One GPU with process rows (pid, bytes, kernel id or None)."""
    return GpuReading.from_json(
        {
            "index": index,
            "uuid": f"GPU-{index}",
            "name": name,
            "processes_stale": stale,
            "processes": [
                {"pid": pid, "used_memory": used, "kernel_id": kernel,
                 "attributed_by": "pid" if kernel else None}
                for pid, used, kernel in processes
            ],
        }  # fmt: skip
    )


def table(reports, simulated=False) -> ContextSizes:
    """A table over DEVICES, driver 580.159.04."""
    return ContextSizes(
        lambda: reports.current,
        devices=lambda: DEVICES,
        driver=lambda: "580.159.04",
        simulated=lambda: simulated,
    )


def settle(sizes, reports, kernel_id, nvml_mib, reserved_mib, gpu_index=0, **gpu_args):
    """Two rounds with the same figures and two reports: one measurement of nvml - reserved."""
    for _ in range(2):
        reports.put(kernel_id, {f"GPU-{gpu_index}": reserved_mib * MIB})
        sizes.observe(
            [gpu(gpu_index, processes=[(100, nvml_mib * MIB, kernel_id)], **gpu_args)]
        )


def test_figures_that_stood_still_between_two_reports_measure_the_context():
    """One JAX kernel: NVML 26,320 MiB, pool 25,770 MiB, twice: 550 MiB on an H200 and driver."""
    reports = Reports()
    sizes = table(reports)
    # Given one round with the figures: nothing yet (they may be mid-allocation)
    reports.put("k1", {"GPU-0": 25770 * MIB})
    sizes.observe([gpu(processes=[(100, 26320 * MIB, "k1")])])
    assert sizes.measured("NVIDIA H200", "580.159.04") is None
    # When a later report gives the same figures
    reports.put("k1", {"GPU-0": 25770 * MIB})
    sizes.observe([gpu(processes=[(100, 26320 * MIB, "k1")])])
    # Then the difference is the context of that GPU model and driver
    assert sizes.measured("NVIDIA H200", "580.159.04") == 550 * MIB
    reserve = sizes.reserve(["GPU-0"])
    assert (reserve.mb, reserve.source) == (550, "measured")
    assert reserve.measured_on == "NVIDIA H200, driver 580.159.04"
    assert sizes.to_json() == [
        {"gpu": "NVIDIA H200", "driver": "580.159.04", "context_mb": 550, "kernels_measured": 1}
    ]


def test_figures_that_moved_measure_nothing():
    """An allocation growing between NVML's read and the report is not a context."""
    reports = Reports()
    sizes = table(reports)
    for nvml, reserved in ((1000, 0), (3000, 2048), (5000, 4096)):
        reports.put("k1", {"GPU-0": reserved * MIB})
        sizes.observe([gpu(processes=[(100, nvml * MIB, "k1")])])
    assert sizes.measured("NVIDIA H200", "580.159.04") is None


@pytest.mark.parametrize(
    ("what", "frameworks", "processes", "stale"),
    [
        ("TensorFlow reports in use, not reserved", ("tensorflow",), [(100, 2000, "k1")], None),
        ("torch and TensorFlow", ("torch", "tensorflow"), [(100, 2000, "k1")], None),
        ("two processes of the kernel", ("jax",), [(100, 1000, "k1"), (101, 1000, "k1")], None),
        ("no NVML figure", ("jax",), [(100, None, "k1")], None),
        ("a process list of an earlier round", ("jax",), [(100, 2000, "k1")], "Timeout"),
    ],
)
def test_no_measurement_where_the_figures_are_not_of_one_process_and_its_pool(
    what, frameworks, processes, stale
):
    """Only one process's NVML figure against a reserving framework's pool, from a fresh list."""
    reports = Reports()
    sizes = table(reports)
    for _ in range(3):
        reports.put("k1", {"GPU-0": 1500 * MIB}, frameworks)
        sizes.observe([gpu(processes=[(p, None if u is None else u * MIB, k) for p, u, k in processes],
                           stale=stale)])  # fmt: skip
    assert sizes.measured("NVIDIA H200", "580.159.04") is None, what


@pytest.mark.parametrize("reserved_mib", [2000, 0])
def test_a_report_that_cannot_be_a_context_is_not_taken(reserved_mib):
    """More reserved than NVML shows, or a difference over the bound (a report of 0 for a 10 GiB
    process): not taken, so a kernel's lie moves the reserve by at most the bound."""
    reports = Reports()
    sizes = table(reports)
    nvml = 1000 if reserved_mib else MAX_CONTEXT_BYTES // MIB + 1
    settle(sizes, reports, "k1", nvml, reserved_mib)
    assert sizes.measured("NVIDIA H200", "580.159.04") is None


def test_the_reserve_is_the_largest_recent_kernels_measurement():
    """Per kernel its largest (a context grows as libraries load), then the largest of the last
    KERNELS_KEPT kernels; older kernels' figures go."""
    reports = Reports()
    sizes = table(reports)
    settle(sizes, reports, "big", 2600, 2000)  # 600 MiB
    settle(sizes, reports, "k0", 1400, 1000)  # 400 MiB
    settle(sizes, reports, "k0", 1450, 1000)  # 450 MiB later: cuBLAS loaded
    assert sizes.measured("NVIDIA H200", "580.159.04") == 600 * MIB
    for n in range(KERNELS_KEPT - 1):
        settle(sizes, reports, f"k{n + 1}", 1300, 1000)  # 300 MiB each
    assert sizes.measured("NVIDIA H200", "580.159.04") == 450 * MIB  # "big" pushed out
    assert sizes.to_json()[0]["kernels_measured"] == KERNELS_KEPT


def test_a_gpu_without_a_measurement_gets_the_starting_value():
    """A kernel on an H200 (measured) and an A100 (not), or on any GPU: the starting value or
    the larger measurement; a MIG slice counts as its GPU."""
    reports = Reports()
    sizes = table(reports)
    settle(sizes, reports, "k1", 1400, 1000)  # 400 MiB on the H200
    assert sizes.reserve(["GPU-0"]).mb == 400
    both = sizes.reserve(["GPU-0", "MIG-1a"])
    assert (both.mb, both.source, both.measured_on) == (STARTING_CONTEXT_MB, "starting value", None)
    assert sizes.reserve(None).source == "starting value"
    assert sizes.reserve(["1"]).mb == STARTING_CONTEXT_MB
    # And a measurement larger than the starting value wins over it
    settle(sizes, reports, "k2", 1800, 1000)  # 800 MiB
    assert sizes.reserve(["GPU-0", "GPU-1"]).mb == 800


def test_simulated_gpus_have_no_context():
    """The simulated backend's "GPU memory" is resident memory: nothing to measure or reserve."""
    reports = Reports()
    sizes = table(reports, simulated=True)
    settle(sizes, reports, "k1", 1400, 1000)
    assert sizes.to_json() == []
    assert (sizes.reserve(None).mb, sizes.reserve(None).source) == (0, "simulated")


def test_the_table_is_bounded_in_gpu_models_and_forgets_gone_kernels_rounds():
    """At most MODELS_KEPT models; the per-round figures are kept only for what was seen."""
    reports = Reports()
    sizes = table(reports)
    for n in range(MODELS_KEPT + 3):
        settle(sizes, reports, f"k{n}", 1400, 1000, name=f"GPU model {n}")
    assert len(sizes.to_json()) == MODELS_KEPT
    assert sizes.measured("GPU model 0", "580.159.04") is None
    sizes.observe([gpu()])
    assert sizes._last == {}

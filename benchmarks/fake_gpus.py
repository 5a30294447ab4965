"""The fake NVML's GPUs for serve_fake.py: the spec's per-call latencies, A100s or H100s split
into MIG slices, GPU processes of no kernel, and NVML faults injected into it."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Latencies (seconds per call) of the product spec; keys are the Python names the fake times.
SPEC_LATENCY = {
    "nvmlDeviceGetPcieThroughput": 0.020,
    "nvmlDeviceGetComputeRunningProcesses_v3": 0.0045,
    "nvmlDeviceGetGraphicsRunningProcesses_v3": 0.0045,
    "nvmlDeviceGetFanSpeed": 0.00014,
    "nvmlDeviceGetMemoryInfo": 0.00001,
}
GPU_COUNT = 8
# With --mig: H100 80GB boards split into 1g.10gb slices (7 of them fill a board).
MIG_GPU_NAME = "NVIDIA H100 80GB HBM3"
MIG_PROFILE = "1g.10gb"
MIG_SLICE_BYTES = 10 * 2**30
# GPU instance id of slot 0; NVML's ids for the seven 1g slices of an H100 are not 0-based.
MIG_FIRST_GPU_INSTANCE = 7
# Memory of each --foreign-processes process.
FOREIGN_PROCESS_BYTES = 2**30


def make_fake(latency: bool, gpus: int, mig: int = 0, foreign: int | None = None):
    """The fake NVML with busy-looking GPUs (distinct objects: the fake tells GPUs apart by identity).

    By default 8 A100s, each with one process. ``mig`` slices every GPU (H100s); ``foreign``
    replaces the one process per GPU with that many processes of no kernel, spread over the
    GPUs and their slices, with the GPUs' and slices' used memory their sum.
    """
    sys.path.insert(0, str(REPO))
    from tests.fake_pynvml import FakeGpu, FakeMig, FakeNvml, FakeProcess

    boards = []
    for i in range(gpus):
        processes = []
        if foreign is None:
            processes = [FakeProcess(pid=40_000 + 2 * i, used_memory=(10 + 5 * i) * 2**30)]
        boards.append(
            FakeGpu(
                name=MIG_GPU_NAME if mig else FakeGpu.name,
                memory_used=(10 + 5 * i) * 2**30 if foreign is None else 0,
                util_gpu=(17 * i) % 100,
                util_memory=(11 * i) % 100,
                temperature=40 + i,
                power_draw_mw=90_000 + 10_000 * i,
                pcie_tx_kb=1000 * (i + 1),
                pcie_rx_kb=2000 * (i + 1),
                processes=processes,
                mig_enabled=bool(mig),
                max_mig_devices=max(7, mig),
                mig_devices=[
                    FakeMig(
                        memory_total=MIG_SLICE_BYTES,
                        gpu_instance_id=MIG_FIRST_GPU_INSTANCE + j,
                        compute_instance_id=0,
                        profile=MIG_PROFILE,
                    )
                    for j in range(mig)
                ],
            )
        )
    fake = FakeNvml(gpus=boards, latency=None if not latency else dict(SPEC_LATENCY))
    if foreign and gpus:
        base = foreign_pid_base()
        add_processes(fake, [
            {"pid": base + k, "gpu": k % gpus, "mig": (k // gpus) % mig if mig else None,
             "used_memory": FOREIGN_PROCESS_BYTES}
            for k in range(foreign)
        ])  # fmt: skip
    return fake


def inject_faults(fake, specs: list[dict]) -> None:
    """Add faults to the fake, each ``{"name", "error", "times", "gpu", "delay"}``: ``error`` an
    ``NVML_ERROR_`` suffix ("TIMEOUT") or a code, the rest as ``FakeNvml.inject`` takes them."""
    for spec in specs:
        error = spec["error"]
        if isinstance(error, str):
            error = getattr(fake.module, f"NVML_ERROR_{error.upper()}")
        fake.inject(
            spec["name"], int(error), times=spec.get("times"), gpu=spec.get("gpu"),
            delay=float(spec.get("delay", 0.0)),
        )  # fmt: skip


def foreign_pid_base() -> int:
    """A PID above the kernel's ``pid_max``: no process on this host can have it."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 2**22  # the largest Linux allows
    return pid_max + 1000


def add_processes(fake, specs: list[dict]) -> None:
    """List more GPU processes in the fake (each on a GPU, and on a MIG slot or the whole GPU),
    adding their memory to the GPU's and the slice's used memory. Raises ValueError on a bad spec."""
    from tests.fake_pynvml import FakeProcess

    for spec in specs:
        gpu_index, slot = int(spec["gpu"]), spec.get("mig")
        used = int(spec.get("used_memory") or 0)
        if not 0 <= gpu_index < len(fake.gpus):
            raise ValueError(f"no GPU {gpu_index}")
        gpu = fake.gpus[gpu_index]
        ids: tuple[int, ...] = ()
        if slot is not None:
            if not gpu.mig_enabled or not 0 <= int(slot) < len(gpu.mig_devices):
                raise ValueError(f"GPU {gpu_index} has no MIG slot {slot}")
            mig = gpu.mig_devices[int(slot)]
            ids = (mig.gpu_instance_id, mig.compute_instance_id)
            mig.memory_used += used
        gpu.memory_used += used
        # A new list, not an append: the sampler thread may be reading the old one.
        gpu.processes = [*gpu.processes, FakeProcess(int(spec["pid"]), used, *ids)]


def remove_processes(fake, pids: set[int]) -> None:
    """Take processes off the fake's lists, with their memory."""
    for gpu in fake.gpus:
        kept = []
        for proc in gpu.processes:
            if proc.pid not in pids:
                kept.append(proc)
                continue
            used = proc.used_memory or 0
            gpu.memory_used = max(0, gpu.memory_used - used)
            ids = (proc.gpu_instance_id, proc.compute_instance_id)
            for mig in gpu.mig_devices:
                if mig is not None and (mig.gpu_instance_id, mig.compute_instance_id) == ids:
                    mig.memory_used = max(0, mig.memory_used - used)
        gpu.processes = kept


def list_processes(fake) -> list[dict]:
    """The fake's GPU processes as ``bench/processes`` shows them."""
    out = []
    for index, gpu in enumerate(fake.gpus):
        slots = {
            (m.gpu_instance_id, m.compute_instance_id): j
            for j, m in enumerate(gpu.mig_devices)
            if m is not None
        }
        for proc in list(gpu.processes):
            slot = slots.get((proc.gpu_instance_id, proc.compute_instance_id))
            out.append(
                {"pid": proc.pid, "gpu": index, "mig": slot, "used_memory": proc.used_memory}
            )
    return out

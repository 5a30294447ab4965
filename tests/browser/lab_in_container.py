"""`jupyter lab` over a fake NVML that sees its GPUs as from inside a container: GPU 0 lists a
process of another PID namespace (the server cannot match it to a kernel by PID, so a kernel's
memory there is its own report), and GPU 1's process list times out at every read (its list is
stale, so the memory of a kernel that may use GPU 1 is unknown).

Run as a script by `labserver.Lab(..., launcher="lab_in_container.py")`; every argument goes to
JupyterLab.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pynvml  # noqa: E402 - the real binding, for its error codes

from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess  # noqa: E402
from tests.server.test_container_attribution import unused_pid  # noqa: E402

GIB = 2**30
# The process list NVML reads (nvidia-ml-py picks the newest version the driver has).
PROCESS_LIST = "nvmlDeviceGetComputeRunningProcesses_v3"

nvml = FakeNvml(gpus=[FakeGpu(memory_used=3 * GIB), FakeGpu()])
nvml.gpus[0].processes.append(FakeProcess(pid=unused_pid(), used_memory=3 * GIB))
nvml.inject(PROCESS_LIST, pynvml.NVML_ERROR_TIMEOUT, gpu=1)
sys.modules["pynvml"] = nvml.module

from jupyterlab.labapp import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

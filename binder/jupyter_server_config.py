"""jupyter-tfgpu on mybinder, read through binder/start: simulated GPUs, since binder has none.

The simulated GPUs are labelled as such everywhere; a process's "GPU memory" on them is the
real resident memory of its kernel's process tree, so the demo's allocations are seen,
attributed and capped as on a real GPU server.
"""

c = get_config()  # noqa: F821 - provided by traitlets when the file is loaded

c.TFGPU.backend = "simulated"
c.TFGPU.simulated_gpus = [{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 2}]
# Read the process lists every second, so an allocation shows up quickly in the demo.
c.TFGPU.process_interval = 1.0
# An admin cap the demo runs into: no notebook may ask for more than 8 GiB per GPU.
c.TFGPU.max_memory_mb = 8192
# Every kernel grows its GPU memory as needed unless its notebook says otherwise.
c.TFGPU.default_policy = {"memory_growth": True}
# Say so (JupyterLab notification, event, log) when a kernel goes over its cap; never act.
c.TFGPU.enforcement = "warn"

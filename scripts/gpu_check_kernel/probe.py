"""Run in every kernel first: its pid, cgroup, Python, environment, policy and frameworks."""

import importlib.util
import json
import os
import sys


def probe(env_names):
    """What the provisioner and the bootstrap gave this kernel process."""
    env = {name: os.environ.get(name) for name in env_names}
    try:
        policy = json.loads(os.environ.get("TFGPU_POLICY") or "null")
    except ValueError as exc:
        policy = {"unreadable": str(exc)}
    try:  # cgroup v2's line; under TFGPU.hard_caps nvml, the kernel's own leaf
        lines = open("/proc/self/cgroup").read().splitlines()
        cgroup = next((line[3:] for line in lines if line.startswith("0::")), None)
    except OSError:
        cgroup = None
    return {
        "pid": os.getpid(),
        "cgroup": cgroup,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "env": env,
        "policy": policy,
        "bootstrap_loaded": "tfgpu_bootstrap" in sys.modules,
        "frameworks": {
            name: importlib.util.find_spec(name) is not None for name in ("jax", "torch", "numpy")
        },
    }

"""One JupyterLab server a team shares on a 4-GPU machine: /etc/jupyter/jupyter_server_config.py.

Everyone's kernels belong to this one server, so the sampler, the attribution and the enforcer
see all of them. Whoever can edit this file, or run code as the server's user (every user of
the server can: a notebook cell can), can change these settings: see the Limits page.
"""

from jupyter_tfgpu.server.events import enforcement_log

c = get_config()  # noqa: F821 - provided by traitlets when the server loads the file

c.TFGPU.backend = "nvml"

# Every notebook that does not say otherwise: grow memory as needed, and get one GPU, the one
# with the most free memory when its kernel starts.
c.TFGPU.default_policy = {"memory_growth": True, "devices": "auto", "gpu_count": 1}
c.TFGPU.placement_strategy = "most_free_memory"

# Caps: at most 40 GiB per GPU for any kernel; the fourth GPU is kept for the nightly jobs.
c.TFGPU.max_memory_mb = 40 * 1024
c.TFGPU.allowed_devices = [0, 1, 2]
c.TFGPU.force_memory_growth = True

# Start with "warn" (a notification, an event, a log line); move to "restart" once the team
# knows the caps.
c.TFGPU.enforcement = "warn"
c.TFGPU.enforcement_grace = 60.0

# Free GPU memory that idle kernels sit on: after two hours idle holding at least 1 GiB.
c.TFGPU.idle_timeout = 2 * 3600.0
c.TFGPU.idle_min_memory_mb = 1024
c.TFGPU.idle_action = "restart"

# Keep the policies with the server's other state (create the folder first, writable by the
# server's user), and beside them an audit trail of enforcement decisions, one JSON line each.
c.TFGPU.policy_store_path = "/srv/jupyter/tfgpu/policies.json"
c.EventLogger.handlers = [enforcement_log("/srv/jupyter/tfgpu/enforcement.jsonl")]

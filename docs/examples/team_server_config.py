"""One JupyterLab server a team shares on a 4-GPU machine: /etc/jupyter/jupyter_server_config.py.

Everyone's kernels belong to this one server, so the sampler, the attribution and the enforcer
see all of them. Whoever can edit this file, or run code as the server's user (every user of
the server can: a notebook cell can), can change these settings: see the Limits page.
"""

from jupyter_tfgpu.server.events import enforcement_log

c = get_config()  # noqa: F821 - provided by traitlets when the server loads the file

c.TFGPU.backend = "nvml"

# The defaults, caps and enforcement: in a file root owns, which the server reads again
# whenever it changes, so they change without a restart (the example tfgpu-caps.json).
c.TFGPU.caps_file = "/etc/jupyter/tfgpu-caps.json"

# Keep the policies with the server's other state (create the folder first, writable by the
# server's user), and beside them an audit trail of enforcement decisions, one JSON line each.
c.TFGPU.policy_store_path = "/srv/jupyter/tfgpu/policies.json"
c.EventLogger.handlers = [enforcement_log("/srv/jupyter/tfgpu/enforcement.jsonl")]

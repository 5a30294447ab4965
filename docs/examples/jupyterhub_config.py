"""JupyterHub on one GPU machine: every user's server runs jupyter-tfgpu with the admin's caps.

Add this to the hub's jupyterhub_config.py. jupyter-tfgpu must be installed in the Python
environment the single-user servers run in (installing it enables it there). The test
tests/server/test_jupyterhub.py starts a real hub with these arguments.
"""

c = get_config()  # noqa: F821 - provided by traitlets when JupyterHub loads the file

# How users log in and how their servers start are this site's own choices, for example:
# c.JupyterHub.authenticator_class = "pam"  # the machine's own accounts
# c.JupyterHub.spawner_class = "systemdspawner.SystemdSpawner"  # or the default local processes

# The same settings for everyone's server, on each single-user server's command line. The
# command line wins over every config file, the users' own ~/.jupyter ones included, so a user
# cannot undo these by editing a file. Put here what users must not change; defaults they may
# change (default_policy, for instance) can go in a config file instead.
c.Spawner.args = [
    # Keep the extension on, whatever a user's config file says, and stop the server rather
    # than run it without the caps when something is wrong (a user's file cannot say "warn").
    "--ServerApp.jpserver_extensions=jupyter_tfgpu=True",
    "--TFGPU.on_config_error=stop",
    "--TFGPU.backend=nvml",
    "--TFGPU.use_provisioner=True",
    # No kernel may use more than 20 GiB on any GPU; a notebook asking for more gets a 403.
    "--TFGPU.max_memory_mb=20480",
    # TensorFlow and JAX allocate as they go instead of mapping a whole GPU at start.
    "--TFGPU.force_memory_growth=True",
    # A kernel over its cap for a minute is restarted (at most 3 times an hour; then warnings).
    "--TFGPU.enforcement=restart",
    "--TFGPU.enforcement_grace=60",
    "--TFGPU.max_actions_per_hour=3",
    # A kernel idle for an hour while holding GPU memory is restarted, freeing the memory.
    "--TFGPU.idle_timeout=3600",
    "--TFGPU.idle_action=restart",
]

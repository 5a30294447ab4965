"""Names shared across the process boundary between the server and the kernels, defined once.

The server side and the kernel side (``in_kernel/``) import them from here. The kernel bootstrap
(``in_kernel/bootstrap/``) runs in any Python and imports nothing of this package: it keeps its own
copies, which ``tests/project/test_protocol.py`` pins to these. Dependency-free on purpose.
"""

# The kernel channel: ``Authorization: tfgpu-kernel <token>`` on ``tfgpu/api/kernel/...``.
AUTH_SCHEME = "tfgpu-kernel"

# Variables the provisioner puts in each kernel's environment.
POLICY_ENV = "TFGPU_POLICY"  # the effective policy the kernel started with, as JSON
SERVER_URL_ENV = "TFGPU_SERVER_URL"  # where the kernel reaches the server (with base_url)
KERNEL_TOKEN_ENV = "TFGPU_KERNEL_TOKEN"  # the kernel's own token for the kernel channel
KERNEL_ID_ENV = "TFGPU_KERNEL_ID"  # inherited by every descendant: attribution of detached ones
RECORD_DIR_ENV = "TFGPU_RECORD_DIR"  # where the bootstrap writes its per-process record
# Read by the kernel's reporter, set by no one by default: seconds between memory reports.
REPORT_INTERVAL_ENV = "TFGPU_REPORT_INTERVAL"

# Frameworks whose GPU memory figures a kernel reports (and the server accepts).
REPORTING_FRAMEWORKS = ("tensorflow", "torch", "jax")
# Modules whose import the bootstrap watches to apply in-process settings (Keras for mixed
# precision); a superset of the reporting frameworks.
HOOKED_MODULES = ("tensorflow", "keras", "torch", "jax")

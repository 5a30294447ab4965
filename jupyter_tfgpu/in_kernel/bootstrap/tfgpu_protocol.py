"""The names the bootstrap shares with the server: copies of ``jupyter_tfgpu/protocol.py``.

The bootstrap runs in any Python and imports nothing of ``jupyter_tfgpu``, so it keeps copies,
pinned to the originals by tests/project/test_protocol.py. Every module of this folder takes them
from here; ``sitecustomize`` keeps its own ``POLICY_ENV``, so that a start-up without a policy
imports nothing of the folder. Imports nothing itself.
"""

AUTH_SCHEME = "tfgpu-kernel"
POLICY_ENV = "TFGPU_POLICY"
SERVER_URL_ENV = "TFGPU_SERVER_URL"
KERNEL_TOKEN_ENV = "TFGPU_KERNEL_TOKEN"
RECORD_DIR_ENV = "TFGPU_RECORD_DIR"
REPORT_INTERVAL_ENV = "TFGPU_REPORT_INTERVAL"
REPORTING_FRAMEWORKS = ("tensorflow", "torch", "jax")
HOOKED_MODULES = ("tensorflow", "keras", "torch", "jax")

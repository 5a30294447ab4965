"""Running code in fresh Python processes with the kernel bootstrap first on PYTHONPATH."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from jupyter_tfgpu import protocol
from jupyter_tfgpu.policy.environment import POLICY_VARIABLES

BOOTSTRAP = Path(__file__).resolve().parent.parent / "jupyter_tfgpu" / "in_kernel" / "bootstrap"
HAS_TF = importlib.util.find_spec("tensorflow") is not None
# Variables a developer's shell (or the server's test kernel) could leak into the children.
LEAKY = (
    "PYTHONPATH",
    protocol.POLICY_ENV,
    protocol.RECORD_DIR_ENV,
    protocol.SERVER_URL_ENV,
    protocol.KERNEL_TOKEN_ENV,
    protocol.KERNEL_ID_ENV,
    protocol.REPORT_INTERVAL_ENV,
    "JAX_PLATFORMS",
    "http_proxy",
    "HTTP_PROXY",
    *POLICY_VARIABLES,
)


def run_python(code: str, path=(), env=None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the bootstrap (then ``path``) on PYTHONPATH.

    ``env`` adds variables; a value of None removes one.
    """
    child_env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    child_env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join([str(BOOTSTRAP), *map(str, path)]),
    )
    for name, value in (env or {}).items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(proc: subprocess.CompletedProcess):
    """The JSON document a child printed last; fails with its stderr if it did not."""
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])

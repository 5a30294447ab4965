"""The installed package enables itself: server extension, lab extension, provisioner."""

from __future__ import annotations

import re
import subprocess
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def jupyter(*args: str) -> str:
    """Run a `jupyter` subcommand of this environment; stdout and stderr together, no colours."""
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", *args], capture_output=True, text=True, timeout=120
    )
    return ANSI.sub("", done.stdout + done.stderr)


def test_server_extension_is_enabled_and_ok():
    """`jupyter server extension list` shows jupyter_tfgpu enabled and validating OK."""
    out = jupyter("server", "extension", "list")
    assert re.search(r"jupyter_tfgpu\s+enabled", out), out
    assert re.search(r"jupyter_tfgpu\s+[\d.]+\s+OK", out), out


def test_prebuilt_lab_extension_is_enabled_and_ok():
    """`jupyter labextension list` shows the prebuilt extension; no `jupyter lab build`."""
    out = jupyter("labextension", "list")
    assert re.search(r"jupyter-tfgpu v[\d.]+\s+enabled\s+OK", out), out


def test_provisioner_entry_point_is_registered():
    """jupyter_client finds the tfgpu-provisioner through its entry point."""
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    assert "tfgpu-provisioner" in KernelProvisionerFactory.instance().provisioners

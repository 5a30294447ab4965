"""When things go wrong, %tfgpu and the panels say so in one sentence: no traceback, no token."""

from __future__ import annotations

import html

import nbformat
import pytest
from jupyter_client.provisioning import KernelProvisionerFactory
from nbclient import NotebookClient

from tests.notebooks.run import HERE, code_cells, run_notebook

FAKE_TOKEN = "not-the-token-s3cr3t"  # what tests/notebooks/server_trouble.ipynb sets


async def test_token_refused_and_server_down(jp_fetch, jp_serverapp, jp_root_dir):
    """A refused token and a stopped server each give a clear message, and never the token."""
    # When the kernel's token stops being valid, then the server goes away
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "server_trouble.ipynb")
    _, status, policy, _, status_down, policy_down, panel, verbose = code_cells(nb)
    # Then %tfgpu says the token was refused, and still shows this machine's GPUs
    for text in (status["text/plain"], html.unescape(status["text/html"])):
        assert "the server refused this kernel's token (HTTP 403)" in text
        assert "restart the kernel" in text
    assert "UsageError: the server refused this kernel's token" in policy["stderr"]
    # And with the server down it says where it looked
    assert "is not reachable (ConnectionRefusedError)" in status_down["text/plain"]
    assert (
        "UsageError: the policy was not saved: the jupyter-tfgpu server at http://127.0.0.1:"
        in (policy_down["stderr"])
    )
    assert "is not reachable" in panel["stdout"]
    # And no magic shows a traceback
    for cell in (status, policy, status_down, policy_down, panel):
        assert not cell["error"]
        assert "Traceback" not in cell["stderr"] + cell["stdout"]
    # And the token appears nowhere, not even in a verbose traceback of the client itself
    assert "Unreachable" in verbose["error"]
    for cell in code_cells(nb):
        assert FAKE_TOKEN not in "".join(cell.values())


@pytest.fixture
def clean_kernel_env(monkeypatch):
    """Kernels started outside a jupyter-tfgpu server: plain provisioner, no TFGPU_ variables."""
    monkeypatch.setattr(
        KernelProvisionerFactory.instance(), "default_provisioner_name", "local-provisioner"
    )
    for name in ("TFGPU_SERVER_URL", "TFGPU_KERNEL_TOKEN", "TFGPU_POLICY", "TFGPU_RECORD_DIR"):
        monkeypatch.delenv(name, raising=False)


async def test_a_kernel_the_server_did_not_start(clean_kernel_env, tmp_path):
    """Outside the server: `%load_ext jupyter_tfgpu`, local NVML (none here), policies refused."""
    # Given a notebook run in a kernel nbclient starts itself
    nb = nbformat.read(HERE / "no_server.ipynb", as_version=4)
    # When it loads the extension and runs %tfgpu
    await NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=120).async_execute()
    _, status, policy = code_cells(nb)
    # Then it says there is no GPU (no NVML library here) and that policies need the server
    for text in (status["text/plain"], html.unescape(status["text/html"])):
        assert "local GPUs (NVML)" in text
        assert "No GPU: NVML Shared Library Not Found." in text
        assert "policies need the jupyter-tfgpu server" in text
    assert "UsageError: policies need the jupyter-tfgpu server" in policy["stderr"]
    assert not status["error"] and "Traceback" not in policy["stderr"]

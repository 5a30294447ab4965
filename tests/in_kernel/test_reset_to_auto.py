"""A reset to an admin default with ``devices: "auto"`` says "restart" and records no error."""

from __future__ import annotations

import pytest

from tests.kernel_helpers import run_json, start_session


@pytest.fixture
def tfgpu_config():
    """The team server's default: grow as needed, one GPU picked when the kernel starts."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "default_policy": {"memory_growth": True, "devices": "auto", "gpu_count": 1},
    }


RESET_HERE = """
import json
import tfgpu_bootstrap
from jupyter_tfgpu.in_kernel import inprocess
from jupyter_tfgpu.in_kernel.client import ServerClient
client = ServerClient.from_env()
view = client.reset_policy()
outcome = inprocess.apply_policy(view["next_start"])
print(json.dumps({
    "state": outcome.state,
    "message": outcome.message,
    "errors": tfgpu_bootstrap.record()["errors"],
    "tensorflow_imported": "tensorflow" in __import__("sys").modules,
}))
"""


async def test_reset_to_automatic_placement_records_no_error(jp_fetch, jp_serverapp):
    """The notebook ran on the CPU; its reset asks for a restart (placement happens at a start)
    and hands the bootstrap nothing it cannot read."""
    # Given a notebook whose own policy keeps it on the CPU, and its running kernel
    await jp_fetch(
        "tfgpu", "api", "policies", "cpu.ipynb", method="PUT", body='{"devices": []}'
    )
    session = await start_session(jp_fetch, "cpu.ipynb")
    # When the notebook removes its own policy and applies the result in the kernel
    result = await run_json(jp_serverapp, session["kernel"]["id"], RESET_HERE)
    # Then a restart is asked for, for the placement, and nothing was recorded as an error
    assert result["state"] == "restart"
    assert "automatic placement" in result["message"]
    assert result["errors"] == []
    assert result["tensorflow_imported"] is False

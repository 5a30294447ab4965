"""A policy applied in the running kernel (no restart) clears "restart required" on the server."""

from __future__ import annotations

import json

from tests.kernel_helpers import run_json, start_session

APPLY_HERE = """
import json
from jupyter_tfgpu.in_kernel import inprocess
from jupyter_tfgpu.in_kernel.client import ServerClient
client = ServerClient.from_env()
view = client.set_policy({"memory_growth": True, "intra_op_threads": 2})
outcome = inprocess.apply_policy(view["next_start"])
inprocess.tell_server(client, outcome)
print(json.dumps({"state": outcome.state, "after": client.policy()["restart_required"]}))
"""


async def test_applying_in_process_clears_restart_required(jp_fetch, jp_serverapp):
    """Before any framework ran, the kernel applies the new policy and the server says so."""
    # Given a kernel with no policy and no framework imported
    session = await start_session(jp_fetch, "here.ipynb")
    kernel_id = session["kernel"]["id"]
    # When the notebook saves a policy and applies it in the running kernel
    result = await run_json(jp_serverapp, kernel_id, APPLY_HERE)
    # Then it was applied here, and no restart is asked for anywhere
    assert result == {"state": "applied", "after": False}
    view = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
    assert view["restart_required"] is False
    assert view["applied"]["memory_growth"] is True and view["applied"]["applied_in_process"]


async def test_a_kernel_cannot_claim_a_policy_it_was_not_given(jp_fetch, jp_serverapp):
    """The server records its own rendering: the kernel's claim cannot raise its cap."""
    await jp_fetch("tfgpu", "api", "policies", "capped.ipynb", method="PUT", body='{"memory_limit_mb": 512}')
    session = await start_session(jp_fetch, "capped.ipynb")
    kernel_id = session["kernel"]["id"]
    await run_json(
        jp_serverapp,
        kernel_id,
        """
import json, os, urllib.request
url = os.environ["TFGPU_SERVER_URL"] + "tfgpu/api/kernel/applied"
request = urllib.request.Request(url, data=json.dumps({"memory_limit_mb": 999999}).encode(),
    method="POST", headers={"Authorization": "tfgpu-kernel " + os.environ["TFGPU_KERNEL_TOKEN"]})
print(json.dumps(urllib.request.urlopen(request).status))
""",
    )
    view = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
    assert view["applied"]["memory_limit_mb"] == 512

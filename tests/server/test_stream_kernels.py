"""The websocket stream carries the kernels with each snapshot, so clients need not poll."""

from __future__ import annotations

import asyncio
import json

from tests.kernel_helpers import start_session


async def test_stream_messages_list_kernels(jp_fetch, jp_ws_fetch):
    """After a notebook opens, stream messages name its kernel, notebook and GPU memory."""
    # Given a kernel started for a notebook, with a policy
    await jp_fetch("tfgpu", "api", "policies", "live.ipynb", method="PUT", body='{"memory_limit_mb": 2048}')
    session = await start_session(jp_fetch, "live.ipynb")
    kernel_id = session["kernel"]["id"]
    # When a client listens to the stream
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        for _ in range(50):
            message = json.loads(await asyncio.wait_for(ws.read_message(), 10))
            mine = [k for k in message["kernels"] if k["id"] == kernel_id]
            if mine and mine[0]["gpu_memory"] > 0:
                break
        else:
            raise AssertionError("the kernel never appeared with GPU memory in the stream")
    finally:
        ws.close()
    # Then the message has the snapshot's GPUs and the kernel's summary
    assert message["gpus"] and message["simulated"] is True
    assert mine[0]["notebook"] == "live.ipynb"
    assert mine[0]["memory_limit_mb"] == 2048
    assert mine[0]["restart_required"] is False

"""Helpers for tests against a real server: start sessions, run code in kernels, wait."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


async def start_session(jp_fetch, path: str, kernel_name: str = "python3") -> dict[str, Any]:
    """Start a notebook session the way JupyterLab does (POST api/sessions)."""
    body = {"path": path, "name": path.rsplit("/", 1)[-1], "type": "notebook", "kernel": {"name": kernel_name}}
    response = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
    return json.loads(response.body)


async def run_code(serverapp, kernel_id: str, code: str, timeout: float = 120) -> str:
    """Execute ``code`` in a running kernel; return its stdout (raises on an error reply)."""
    manager = serverapp.kernel_manager.get_kernel(kernel_id)
    client = manager.client()
    client.start_channels()
    try:
        await asyncio.wait_for(client.wait_for_ready(timeout=timeout), timeout)
        chunks: list[str] = []
        errors: list[str] = []

        def on_output(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream" and content["name"] == "stdout":
                chunks.append(content["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(content["traceback"]))

        reply = await client.execute_interactive(code, output_hook=on_output, timeout=timeout)
        if reply["content"]["status"] != "ok" or errors:
            raise AssertionError(f"kernel code failed:\n{''.join(errors)}")
        return "".join(chunks)
    finally:
        client.stop_channels()


async def run_json(serverapp, kernel_id: str, code: str, timeout: float = 120) -> Any:
    """Run code whose last printed line is JSON; return it parsed."""
    out = await run_code(serverapp, kernel_id, code, timeout)
    return json.loads(out.strip().splitlines()[-1])


async def kernel_token(serverapp, kernel_id: str) -> str:
    """The kernel-channel token the provisioner gave a running kernel, read inside the kernel."""
    code = "import json, os; print(json.dumps(os.environ['TFGPU_KERNEL_TOKEN']))"
    return await run_json(serverapp, kernel_id, code)


def kernel_headers(token: str) -> dict[str, str]:
    """The kernel channel's credentials (replacing the user token jp_fetch would add)."""
    return {"Authorization": f"tfgpu-kernel {token}"}


async def poll(check, timeout: float = 10.0):
    """Await ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the time allowed")
        await asyncio.sleep(0.05)

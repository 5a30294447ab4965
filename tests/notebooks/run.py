"""Run the notebooks of this folder with nbclient against kernels started by the real server."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from tests.kernel_helpers import start_session

HERE = Path(__file__).parent


def copy_notebook(root: Path, name: str, path: str | None = None) -> str:
    """Put ``tests/notebooks/<name>`` into the server root (at ``path``); returns the API path."""
    path = path or name
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / name, target)
    return path


async def execute(
    nb: Any,
    km: Any,
    allow_errors: bool = True,
    timeout: int = 180,
    after_cell: Callable[[int, Any], Awaitable[None]] | None = None,
) -> Any:
    """Execute every cell of ``nb`` in the kernel of ``km`` (the kernel is left running);
    ``after_cell(index, cell)`` runs between cells, as a person would act between them."""
    client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=allow_errors)
    try:
        async with client.async_setup_kernel():
            for index, cell in enumerate(nb.cells):
                await client.async_execute_cell(cell, index)
                if after_cell is not None:
                    await after_cell(index, cell)
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    return nb


async def run_notebook(
    jp_fetch, serverapp, root: Path, name: str, path: str | None = None, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """Open the notebook as JupyterLab does (a session through the REST API), then run it."""
    api_path = copy_notebook(root, name, path)
    session = await start_session(jp_fetch, api_path)
    km = serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
    nb = nbformat.read(root / api_path, as_version=4)
    await execute(nb, km, **kwargs)
    return nb, session


def outputs(cell: Any) -> dict[str, str]:
    """A code cell's outputs by kind: text/plain, text/html, stdout, stderr, error."""
    found: dict[str, str] = {
        "text/plain": "",
        "text/html": "",
        "stdout": "",
        "stderr": "",
        "error": "",
    }
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            found[out["name"]] += out["text"]
        elif out["output_type"] in ("execute_result", "display_data"):
            for mime in ("text/plain", "text/html"):
                found[mime] += out.get("data", {}).get(mime, "")
        elif out["output_type"] == "error":
            found["error"] += (
                out["ename"] + ": " + out["evalue"] + "\n" + "\n".join(out["traceback"])
            )
    return found


def code_cells(nb: Any) -> list[dict[str, str]]:
    """The outputs of every code cell, in order."""
    return [outputs(cell) for cell in nb.cells if cell.cell_type == "code"]


def printed_json(cell_outputs: dict[str, str], line: int = -1) -> Any:
    """A JSON line the cell printed (the last one by default)."""
    return json.loads(cell_outputs["stdout"].strip().splitlines()[line])


class IopubRecorder:
    """A second client on the kernel's iopub channel, recording every message (comm ones too)."""

    def __init__(self, km: Any) -> None:
        # Its own session id: the shell socket's ZMQ identity is the session id, and the kernel
        # would send the replies meant for this client to another client with the same one.
        session = km.session.clone()
        session.session = str(uuid.uuid4())
        self.kc = km.client(session=session)
        self.messages: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> IopubRecorder:
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        while True:
            try:
                self.messages.append(await self.kc.get_iopub_msg(timeout=0.2))
            except queue.Empty:
                continue

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.3)  # what the kernel sent last is on its way
        assert self._task is not None
        self._task.cancel()
        self.kc.stop_channels()

    def updates(self, comm_id: str) -> list[dict[str, Any]]:
        """The state of each ``update`` comm message sent for one widget model."""
        return [
            m["content"]["data"]["state"]
            for m in self.messages
            if m["msg_type"] == "comm_msg"
            and m["content"]["comm_id"] == comm_id
            and m["content"]["data"].get("method") == "update"
        ]

    def closed(self, comm_id: str) -> bool:
        """Whether the kernel closed the comm of a widget model."""
        return any(
            m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id
            for m in self.messages
        )

    async def send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        """Send a comm message as the front end does (a click, an edit), and wait until the
        kernel handled it (a kernel_info reply on the same channel comes after it)."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        await self.kc.kernel_info(reply=True, timeout=30)

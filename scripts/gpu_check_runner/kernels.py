"""The kernels under check: a client on each one's connection file, and the code sent to them.

The code run inside a kernel lives in ``scripts/gpu_check_kernel/<name>.py``, one function named
like its file. ``kernel_code`` sends the file's text and one line that calls the function with
JSON-encoded arguments and prints the result as one JSON line, which ``Kernel.run`` parses.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import time
from pathlib import Path
from typing import Any

KERNEL_CODE_DIR = Path(__file__).resolve().parent.parent / "gpu_check_kernel"


def kernel_code(function: str, **arguments: Any) -> str:
    """The cell that defines ``function`` from its file, calls it and prints its JSON result."""
    path = KERNEL_CODE_DIR / f"{function}.py"
    filename = f"{KERNEL_CODE_DIR.name}/{path.name}"
    call = f"{function}(**_tfgpu_json.loads({json.dumps(arguments)!r}))"
    # exec(compile(...)) rather than the text itself: IPython's input transformers never see
    # the file's lines, and a traceback names the file.
    return (
        f"exec(compile({path.read_text()!r}, {filename!r}, 'exec'))\n"
        "import json as _tfgpu_json\n"
        f"print(_tfgpu_json.dumps({call}, default=repr))\n"
    )


class KernelError(RuntimeError):
    """Code run in a kernel raised."""


class Kernel:
    """A kernel started through POST api/sessions, reached through its connection file."""

    def __init__(self, notebook: str, session: dict[str, Any], runtime: Path):
        self.notebook = notebook
        self.session_id = session["id"]
        self.id = session["kernel"]["id"]
        self.connection_file = runtime / f"kernel-{self.id}.json"
        self.client = None
        self.pid: int | None = None
        self.applied: dict[str, Any] = {}  # GET kernels/{id}'s applied: the launch document
        self.probe: dict[str, Any] = {}
        self.stderr: list[str] = []

    def connect(self, timeout: float) -> None:
        """Load the connection file the server wrote and wait for the kernel to answer."""
        from jupyter_client import BlockingKernelClient

        end = time.monotonic() + timeout
        while not self.connection_file.exists():
            if time.monotonic() > end:
                raise TimeoutError(f"no connection file {self.connection_file.name}")
            time.sleep(0.1)
        client = BlockingKernelClient()
        client.load_connection_file(str(self.connection_file))
        client.start_channels()
        self.client = client
        # Not client.wait_for_ready(): without a kernel manager it takes a heartbeat that has
        # not answered within 1 s for a dead kernel, and a kernel still importing its
        # libraries is not dead. The server's kernel manager watches the process itself.
        while True:
            client.kernel_info()
            try:
                reply = client.get_shell_msg(timeout=1.0)
            except queue.Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:  # iopub subscribed too (its status messages arrive), or outputs are lost
                    client.get_iopub_msg(timeout=0.5)
                    return
                except queue.Empty:
                    pass
            if time.monotonic() > end:
                raise TimeoutError("the kernel did not answer kernel_info")

    def run(self, code: str, timeout: float) -> Any:
        """Execute code; return its last stdout line parsed as JSON (KernelError if it raised)."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                (out if content["name"] == "stdout" else self.stderr).append(content["text"])
            elif msg["msg_type"] == "error":
                trace = "\n".join(content.get("traceback") or [])
                errors.append(re.sub(r"\x1b\[[0-9;]*m", "", trace)[-1500:])

        reply = self.client.execute_interactive(
            code, timeout=timeout, output_hook=hook, allow_stdin=False, store_history=False
        )
        if reply["content"]["status"] != "ok" or errors:
            raise KernelError("".join(errors) or reply["content"].get("evalue", "kernel error"))
        lines = "".join(out).strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def close(self) -> None:
        """Stop this client's channels."""
        if self.client is not None:
            with contextlib.suppress(Exception):  # cleanup goes on
                self.client.stop_channels()
            self.client = None

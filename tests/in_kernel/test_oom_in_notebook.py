"""A GPU out-of-memory error in a real notebook: the kernel the real server started shows the
error as IPython does, then the explanation; the cell still fails with the framework's error.

tests/notebooks/out_of_memory.ipynb raises TensorFlow's real ResourceExhaustedError (the CPU
build constructs it without a GPU), and errors of the same module and name as JAX's and
PyTorch's (not installed here). The server uses the simulated backend, where another notebook's
idle kernel holds memory on GPU 0, and the admin's idle reaping is on.
"""

from __future__ import annotations

import html
import json
import re

from importlib.resources import files

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.kernel_helpers import poll, run_code, start_session
from tests.notebooks.run import copy_notebook, outputs

pytestmark = pytest.mark.tensorflow

NOTEBOOK = "oom/training.ipynb"
OTHER = "oom/idle-holder.ipynb"
EXPLANATION = "jupyter-tfgpu: {} ran out of GPU memory on GPU 0 (Simulated GPU 16GB)"


@pytest.fixture
def tfgpu_config():
    """The simulated backend (a 16 GB GPU 0 and an 80 GB GPU 1), with idle reaping on (an
    hour, any memory, restart)."""
    return {
        "backend": "simulated",
        "simulated_gpus": [
            {"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 1},
            {"name": "Simulated GPU 80GB", "memory_gb": 80, "count": 1},
        ],
        "sample_interval": 0.2,
        "history_seconds": 60,
        "idle_timeout": 3600,
        "idle_min_memory_mb": 1,
        "idle_action": "restart",
    }


async def idle_on_gpu0(jp_fetch, kernel_id: str) -> bool:
    """Whether the server shows the kernel idle, with its process on GPU 0."""
    kernel = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
    gpus = json.loads((await jp_fetch("tfgpu", "api", "gpus")).body)["gpus"]
    held = any(p["kernel_id"] == kernel_id for p in gpus[0]["processes"])
    return held and kernel["execution_state"] == "idle"


def page_text(page: str) -> str:
    """What an HTML output reads as."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def cell_names(text: str) -> str:
    """A traceback without its cell's execution count."""
    return re.sub(r"In\[\d+\]", "In[n]", text)


async def test_an_out_of_memory_error_is_explained_below_its_traceback(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """TensorFlow, JAX and PyTorch OOMs: traceback, then GPU, holders, policy, %tfgpu lines and
    the reaping; a ValueError exactly as without the hook; every cell still an error."""
    # Given another notebook's kernel, idle, holding memory on GPU 0
    other = await start_session(jp_fetch, copy_notebook(jp_root_dir, "status.ipynb", OTHER))
    other_pid = jp_serverapp.kernel_manager.get_kernel(other["kernel"]["id"]).provisioner.pid
    await run_code(jp_serverapp, other["kernel"]["id"], "data = list(range(10**6))")
    await poll(lambda: idle_on_gpu0(jp_fetch, other["kernel"]["id"]), timeout=60)
    # When the notebook runs in a kernel the server started, recording each execute_reply
    path = copy_notebook(jp_root_dir, "out_of_memory.ipynb", NOTEBOOK)
    session = await start_session(jp_fetch, path)
    km = jp_serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
    nb = nbformat.read(jp_root_dir / path, as_version=4)
    replies = []

    def record(cell, cell_index, execute_reply):
        replies.append(execute_reply["content"])

    client = NotebookClient(nb, km=km, timeout=180, allow_errors=True, on_cell_executed=record)
    async with client.async_setup_kernel():
        for index, cell in enumerate(nb.cells):
            await client.async_execute_cell(cell, index)
    client.kc.stop_channels()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    tf_oom, jax_oom, torch_oom, value_error, _, plain_error = code
    tf_reply, jax_reply, torch_reply, value_reply, _, plain_reply = replies

    # Then each OOM cell shows the framework's error first, then the explanation
    for cell, label, ename in (
        (tf_oom, "TensorFlow", "ResourceExhaustedError"),
        (jax_oom, "JAX", "XlaRuntimeError"),
        (torch_oom, "PyTorch", "OutOfMemoryError"),
    ):
        kinds = [out["output_type"] for out in cell.outputs]
        assert kinds == ["error", "display_data"], (label, kinds)
        assert cell.outputs[0]["ename"] == ename
        shown = outputs(cell)
        for text in (shown["text/plain"], page_text(shown["text/html"])):
            assert EXPLANATION.format(label) in text
            # who holds GPU 0: this kernel by its notebook, the other one idle, by PID
            assert f"this kernel ({NOTEBOOK})" in text
            assert "another notebook's kernel on this server" in text
            assert re.search(rf"{other_pid}\s*another notebook's kernel", text)
            assert re.search(r"idle \d+ s|idle \d+ min", text)
            # this kernel's policy, and the lines that would help, restart included
            assert "This kernel runs with: memory growth not set" in text
            assert "%tfgpu policy --devices auto" in text
            assert "GPU 1 has the most free memory now: 79.7 GiB" in text
            assert "so it takes effect after a restart: Kernel > Restart Kernel" in text
            # when the idle holder's memory comes back
            assert "The server restarts kernels idle for 1 h that hold at least 1.0 MiB" in text
            assert f"the idle memory here comes back from PID {other_pid} (" in text
        # growth changes TensorFlow and JAX; a limit helps where the allocation fits the GPU
        lines = [line.split()[:3] for line in shown["text/plain"].splitlines()]
        assert (["%tfgpu", "policy", "--growth"] in lines) is (label != "PyTorch")
        assert (["%tfgpu", "policy", "--limit"] in lines) is (label == "TensorFlow")
        too_big = "The allocation alone is larger than GPU 0 (16.0 GiB)" in shown["text/plain"]
        assert too_big is (label == "PyTorch")  # it asked for 20 GiB
        assert OTHER not in json.dumps(cell.outputs)  # another notebook stays unnamed
    # And every one of them still failed, with the framework's own error
    for reply, ename in (
        (tf_reply, "ResourceExhaustedError"),
        (jax_reply, "XlaRuntimeError"),
        (torch_reply, "OutOfMemoryError"),
    ):
        assert (reply["status"], reply["ename"]) == ("error", ename)
    assert "OOM when allocating tensor" in tf_reply["evalue"]
    assert tf_reply["traceback"] == tf_oom.outputs[0]["traceback"]

    # And a ValueError is shown exactly as IPython shows it without the hook, nothing added
    assert [out["output_type"] for out in value_error.outputs] == ["error"]
    assert [out["output_type"] for out in plain_error.outputs] == ["error"]
    for key in ("ename", "evalue"):
        assert value_error.outputs[0][key] == plain_error.outputs[0][key]
    assert cell_names("\n".join(value_error.outputs[0]["traceback"])) == cell_names(
        "\n".join(plain_error.outputs[0]["traceback"])
    )
    assert (value_reply["status"], value_reply["ename"]) == ("error", "ValueError")
    assert (plain_reply["status"], plain_reply["ename"]) == ("error", "ValueError")

    # And kernel/status, where the facts come from, is what the spec says: the reaping in force,
    # and the other kernel's process with how long it has been idle but not whose it is
    token = jp_serverapp.web_app.settings["tfgpu_services"].tokens.issue(session["kernel"]["id"])
    response = await jp_fetch(
        "tfgpu", "api", "kernel", "status", headers={"Authorization": f"tfgpu-kernel {token}"}
    )
    spec = OpenAPI.from_dict(
        yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
    )
    spec.validate_response(
        MockRequest("http://localhost", "get", "/tfgpu/api/kernel/status"),
        MockResponse(response.body, status_code=200, content_type="application/json"),
    )
    seen = json.loads(response.body)
    assert seen["idle_reaping"] == {"timeout": 3600.0, "min_memory_mb": 1, "action": "restart"}
    [row] = [p for p in seen["gpus"][0]["processes"] if p["pid"] == other_pid]
    assert (row["kernel_id"], row["notebook"], row["mine"]) == (None, None, False)
    assert row["idle_seconds"] > 0

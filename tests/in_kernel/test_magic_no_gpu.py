"""A server with no GPU backend: %tfgpu and the panel say so plainly, and policies still work."""

from __future__ import annotations

import html
import json
import re

import pynvml
import pytest

from tests.fake_pynvml import FakeNvml
from tests.notebooks.run import code_cells, printed_json, run_notebook

NVML_FAILED = {
    "backend": "nvml",
    "default_policy": {"devices": "auto"},
    "sample_interval": 0.2,
    "history_seconds": 60,
}


@pytest.fixture
def tfgpu_config():
    """GPU monitoring off, as on a machine without GPUs."""
    return {"backend": "none", "sample_interval": 0.2, "history_seconds": 60}


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """An NVML whose library is missing, in place before the server starts (the backend named
    'none' never asks for it)."""
    return FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


async def test_no_gpu_is_said_plainly(jp_fetch, jp_serverapp, jp_root_dir):
    """`%tfgpu` and `%tfgpu kernels` say there is no GPU and why; no traceback."""
    # When the status notebook runs on a server without GPU monitoring
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "status.ipynb")
    status, _, kernels = code_cells(nb)
    # Then the reason is the server's
    for text in (status["text/plain"], html.unescape(status["text/html"])):
        assert "No GPU: GPU monitoring is turned off (TFGPU.backend = 'none')." in text
        assert "runs with its notebook's policy" in text
    assert "No GPU: GPU monitoring is turned off" in kernels["text/plain"]
    assert not status["error"] and not status["stderr"] and not kernels["error"]
    # And it is a calm remark, not a warning of a failure
    assert 'color: var(--jp-ui-font-color2, #757575)">No GPU: GPU monitoring' in status["text/html"]
    assert "failed" not in status["text/plain"]


async def test_the_panel_says_no_gpu(jp_fetch, jp_serverapp, jp_root_dir):
    """GPUPanel shows the reason instead of bars, and still stops its thread on close()."""
    # When the panel notebook runs
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "gpu_panel.ipynb")
    created, _, closed = code_cells(nb)
    # Then its panel was displayed with the reason, and no thread is left
    assert "GPU monitoring is turned off" in printed_json(created)["error"]
    assert printed_json(closed) == {"updating": False, "threads": []}


@pytest.mark.parametrize("tfgpu_config", [NVML_FAILED])
async def test_nvml_named_but_failing_is_said_loudly(jp_fetch, jp_serverapp, jp_root_dir):
    """Backend "nvml" that cannot start: %tfgpu warns with the reason and the next try, and the
    kernel that asked for a GPU by placement says it runs on the CPU, and why."""
    # When the status notebook runs on a server told to use NVML, whose library is missing
    nb, session = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "status.ipynb")
    status, _, kernels = code_cells(nb)
    # Then %tfgpu says NVML failed, why, and when the server tries again, as a warning
    failed = re.compile(
        r"GPU monitoring failed: this server is set to use NVML, which did not start: "
        r"NVML Shared Library Not Found; the server tries again in \d+ s\."
    )
    placed = (
        "GPU placement: no GPU monitoring (NVML Shared Library Not Found): "
        "this kernel runs on the CPU only."
    )
    for text in (status["text/plain"], html.unescape(status["text/html"])):
        assert failed.search(text), text
        assert placed in text
        assert "No GPU:" not in text
    assert 'color: var(--jp-warn-color1, #e65100)">GPU monitoring failed' in status["text/html"]
    assert failed.search(kernels["text/plain"])
    assert not status["error"] and not status["stderr"] and not kernels["error"]
    # And the server's kernel summary gives the same reason
    response = await jp_fetch("tfgpu", "api", "kernels", session["kernel"]["id"])
    placement = json.loads(response.body)["applied"]["placement"]
    assert placement["chosen"] == []
    assert placement["reason"] == placed.removeprefix("GPU placement: ").removesuffix(".")

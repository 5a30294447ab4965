"""A server with no GPU backend: %tfgpu and the panel say so plainly, and policies still work."""

from __future__ import annotations

import html

import pytest

from tests.notebooks.run import code_cells, printed_json, run_notebook


@pytest.fixture
def tfgpu_config():
    """GPU monitoring off, as on a machine without GPUs."""
    return {"backend": "none", "sample_interval": 0.2, "history_seconds": 60}


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


async def test_the_panel_says_no_gpu(jp_fetch, jp_serverapp, jp_root_dir):
    """GPUPanel shows the reason instead of bars, and still stops its thread on close()."""
    # When the panel notebook runs
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "gpu_panel.ipynb")
    created, _, closed = code_cells(nb)
    # Then its panel was displayed with the reason, and no thread is left
    assert "GPU monitoring is turned off" in printed_json(created)["error"]
    assert printed_json(closed) == {"updating": False, "threads": []}

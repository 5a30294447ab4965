"""The magic and the panels on ipykernel 6 too (the main environment has ipykernel 7).

Needs a second Python environment with ipykernel 6 and ipywidgets 8, named by
``TFGPU_TEST_IPYKERNEL6_PYTHON`` (e.g. ``python -m venv /tmp/ipk6 && /tmp/ipk6/bin/pip install
'ipykernel>=6.29,<7' 'ipywidgets>=8.1,<9' psutil``); skipped without it. The package is taken
from this checkout through PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.kernel_helpers import run_code, start_session
from tests.notebooks.run import IopubRecorder, code_cells, copy_notebook, execute, printed_json

PYTHON = os.environ.get("TFGPU_TEST_IPYKERNEL6_PYTHON")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not PYTHON, reason="TFGPU_TEST_IPYKERNEL6_PYTHON is not set")


@pytest.fixture
def ipykernel6(jp_data_dir):
    """A kernelspec for the ipykernel 6 environment."""
    version = subprocess.run(
        [PYTHON, "-c", "import ipykernel; print(ipykernel.__version__)"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.strip()  # fmt: skip
    assert version.startswith("6."), version
    spec = jp_data_dir / "kernels" / "ipykernel6"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (ipykernel 6)",
                "language": "python",
                "env": {"PYTHONPATH": str(ROOT)},
            }
        )
    )
    return "ipykernel6"


async def test_status_and_panel_on_ipykernel6(jp_fetch, jp_serverapp, jp_root_dir, ipykernel6):
    """%tfgpu loads by itself, and the panel updates from its thread and stops, on ipykernel 6."""
    # Given notebooks opened with the ipykernel 6 kernel
    for name, check in (("status.ipynb", "status"), ("gpu_panel.ipynb", "panel")):
        path = copy_notebook(jp_root_dir, name)
        session = await start_session(jp_fetch, path, kernel_name=ipykernel6)
        km = jp_serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
        nb = nbformat.read(jp_root_dir / path, as_version=4)
        # When they run
        async with IopubRecorder(km) as front_end:
            await execute(nb, km, allow_errors=False)
        cells = code_cells(nb)
        # Then the kernel is an ipykernel 6, and the notebooks behave as on ipykernel 7
        seen = await run_code(
            jp_serverapp, km.kernel_id, "import ipykernel; print(ipykernel.__version__)"
        )
        assert seen.startswith("6.")
        if check == "status":
            assert "Simulated GPU 16GB" in cells[0]["text/plain"]
        else:
            panel_id = printed_json(cells[0])["panel"]
            stamps = {s["timestamp"] for s in front_end.updates(panel_id) if "timestamp" in s}
            assert len(stamps) >= 2
            assert printed_json(cells[2]) == {"updating": False, "threads": []}

"""The %tfgpu magic in real notebooks, run by nbclient in kernels the real server started.

The notebooks are in tests/notebooks/ (open them in JupyterLab to see the same by hand). The
server uses the simulated backend; TensorFlow is the real CPU build.
"""

from __future__ import annotations

import html
import json

import pytest

from jupyter_tfgpu.in_kernel.policy_fields import policy_fields
from tests.notebooks.run import code_cells, printed_json, run_notebook

NOTEBOOK = "team/nb.ipynb"


async def get_json(jp_fetch, *parts: str):
    """GET a route under tfgpu/api/ with the user's token."""
    return json.loads((await jp_fetch("tfgpu", "api", *parts)).body)


async def test_status_without_load_ext_in_text_and_html(jp_fetch, jp_serverapp, jp_root_dir):
    """`%tfgpu`, `--help` and `kernels` work at once in a kernel the server started."""
    # Given a notebook opened through the REST API (no %load_ext anywhere)
    # When its cells run
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "status.ipynb", NOTEBOOK)
    status, help_, kernels = code_cells(nb)
    # Then %tfgpu shows the GPUs, the notebook and the policy state, as text and as HTML
    for text in (status["text/plain"], html.unescape(status["text/html"])):
        assert "Simulated GPU 16GB" in text
        assert NOTEBOOK in text
        assert "runs with its notebook's policy" in text
        # And how its cap (the admin's) is enforced: the server's level, in the lab's words
        assert (
            "Cooperative cap, held by the framework settings (TensorFlow, PyTorch, JAX). Not a "
            "hard cap: the framework settings (TensorFlow, PyTorch, JAX) hold it: code in the "
            "kernel can undo them" in text
        )
    assert "<table>" in status["text/html"]
    assert "GPU  name" in status["text/plain"]
    assert not status["error"] and not status["stderr"]
    # And --help documents every field of the policy schema
    for field in policy_fields():
        assert f"--{field.option}" in help_["stdout"]
    assert "%tfgpu policy --reset" in help_["stdout"]
    # And kernels lists who holds memory: this kernel, by its notebook
    assert f"this kernel ({NOTEBOOK})" in kernels["text/plain"]
    assert "held by" in kernels["text/html"]


async def test_a_policy_set_with_the_magic_is_the_notebooks_policy(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """`%tfgpu policy` saves through the server: GET policies shows it; fields are merged."""
    # When the notebook sets, changes and unsets fields
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "policy.ipynb", NOTEBOOK)
    first, second, third, status = code_cells(nb)
    # Then each step says what was saved
    assert "Saved the policy of team/nb.ipynb." in first["text/plain"]
    assert "Memory limit (MiB): 4 GiB" in first["text/plain"]
    assert "Allocator: cuda_malloc_async" in first["text/html"]
    assert "Memory limit (MiB): 2 GiB" in second["text/plain"]
    assert "Memory growth: on" in second["text/plain"]  # kept from the first
    assert "Allocator" not in third["text/plain"]
    # And the user API has the notebook's policy
    stored = (await get_json(jp_fetch, "policies"))["policies"]
    assert {k: v for k, v in stored[NOTEBOOK].items() if v is not None} == {
        "memory_growth": True,
        "memory_limit_mb": 2048,
        "devices": [0],
    }
    # And no framework was imported, so the kernel applied it at once: no restart needed
    assert "Applied in this kernel" in third["text/plain"]
    assert "runs with its notebook's policy" in status["text/plain"]
    assert all(not cell["error"] for cell in (first, second, third, status))


async def test_reset_removes_the_policy(jp_fetch, jp_serverapp, jp_root_dir):
    """`%tfgpu policy --reset` removes the notebook's own policy."""
    # When the notebook sets a policy, then resets it
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "reset.ipynb", NOTEBOOK)
    saved, reset = code_cells(nb)
    # Then the server has no policy for it any more
    assert "Visible GPUs: CPU only" in saved["text/plain"]
    assert "Removed the policy of team/nb.ipynb." in reset["text/plain"]
    assert NOTEBOOK not in (await get_json(jp_fetch, "policies"))["policies"]


@pytest.mark.tensorflow
async def test_a_policy_saved_before_import_applies_at_import(jp_fetch, jp_serverapp, jp_root_dir):
    """Before `import tensorflow` the policy is applied in-process: the import hook uses it."""
    # When the policy is set, then TensorFlow imported
    nb, _ = await run_notebook(
        jp_fetch, jp_serverapp, jp_root_dir, "apply_before_import.ipynb", NOTEBOOK
    )
    saved, imported, status = code_cells(nb)
    # Then the magic said it applies at the import
    assert "it takes effect when TensorFlow, PyTorch or JAX is imported" in saved["text/plain"]
    # And the bootstrap applied the new policy when TensorFlow was imported
    seen = printed_json(imported)
    assert seen["policy"]["memory_limit_mb"] == 1024
    assert seen["policy"]["memory_growth"] is True
    assert seen["tensorflow"]["source"] == "import"
    skipped = {item["setting"]: item for item in seen["tensorflow"]["skipped"]}
    assert skipped["memory_limit_mb"]["value"] == 1024  # no GPU in this CPU build: said why
    assert seen["growth_env"] == "true"
    # And the kernel needs no restart
    assert "runs with its notebook's policy" in status["text/plain"]
    assert "without a restart" in status["text/plain"]
    assert not imported["error"]


@pytest.mark.tensorflow
async def test_after_an_op_the_magic_says_a_restart_is_needed(jp_fetch, jp_serverapp, jp_root_dir):
    """Once TensorFlow initialized its devices, the policy is saved but not applied: restart."""
    # When TensorFlow ran an op, then the policy changes
    nb, session = await run_notebook(
        jp_fetch, jp_serverapp, jp_root_dir, "restart_required.ipynb", NOTEBOOK
    )
    _, saved, record, status = code_cells(nb)
    # Then the magic says plainly that a restart is needed, and why
    for text in (saved["text/plain"], html.unescape(saved["text/html"])):
        assert "TensorFlow already initialized the GPU in this kernel" in text
        assert "restart the kernel" in text
    assert not saved["error"] and not saved["stderr"]
    # And nothing changed in the kernel (it keeps the admin cap it started with)
    assert printed_json(record)["memory_limit_mb"] == 8192
    # And %tfgpu and the server agree that the kernel needs a restart
    assert "Restart required" in status["text/plain"]
    view = await get_json(jp_fetch, "kernels", session["kernel"]["id"])
    assert view["restart_required"] is True
    assert view["policy"]["memory_limit_mb"] == 2048


@pytest.fixture
def tfgpu_config():
    """The simulated backend with an admin cap of 8 GiB."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "max_memory_mb": 8192,
    }


async def test_bad_input_and_caps_give_clear_messages(jp_fetch, jp_serverapp, jp_root_dir):
    """Bad sizes, unknown fields, unknown GPUs and caps: one clear line each, no traceback."""
    # When the notebook asks for things that cannot be
    nb, _ = await run_notebook(jp_fetch, jp_serverapp, jp_root_dir, "bad_input.ipynb", NOTEBOOK)
    size, field, misplaced, device, cap = code_cells(nb)
    # Then each is a UsageError line that says what is wrong
    assert "'4XB' is not a size" in size["stderr"]
    assert "no policy field 'colour'" in field["stderr"]
    assert "policy options go with %tfgpu policy" in misplaced["stderr"]
    assert "the server refused the policy: devices" in device["stderr"]
    assert "over the admin's limit of 8192 MiB" in cap["stderr"]
    for cell in (size, field, misplaced, device, cap):
        assert cell["stderr"].startswith("UsageError: ")
        assert "Traceback" not in cell["stderr"] + cell["error"]
    # And nothing was saved
    assert NOTEBOOK not in (await get_json(jp_fetch, "policies"))["policies"]

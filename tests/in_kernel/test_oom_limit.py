"""An out-of-memory error at this kernel's own limit: the explanation says which limit it hit on
that GPU and where it is set (in the driver: MPS or NVML; or the framework's own setting), and
keeps the rest (the GPU, its holders, the policy, the lines that help).

TensorFlow's error is its real class (the CPU build makes it without a GPU); PyTorch's and JAX's
are classes of their modules and names, as the frameworks define them (not installed here).
"""

from __future__ import annotations

import html
import json
import re

import nbformat
import pytest

from jupyter_tfgpu.in_kernel.oom import find_out_of_memory
from jupyter_tfgpu.in_kernel.oom_view import explain
from tests.kernel_helpers import poll, start_session
from tests.notebooks.run import execute, outputs

GIB = 2**30
MIB = 2**20
TF_MESSAGE = (
    "OOM when allocating tensor with shape[1024,1024,256] and type float on "
    "/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc [Op:RandomUniform]"
)
TORCH_MESSAGE = (
    "CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total capacity of 79.15 GiB "
    "of which 60.00 GiB is free. Of the allocated memory 3.40 GiB is allocated by PyTorch."
)
JAX_MESSAGE = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 536870912 bytes."
JAX_NO_SIZE = "RESOURCE_EXHAUSTED: Out of memory on device cuda:0."
MPS_LIFTABLE = (
    "MPS limits this kernel in the driver, but code in the kernel can lift them through its own "
    "environment before CUDA starts"
)
SETTINGS = (
    "the framework settings (TensorFlow, PyTorch, JAX) hold it: code in the kernel can undo them"
)
UNVERIFIED = "the driver limit is set (nvml_memory_limit), but no GPU run has shown it holding"


def held(gpu: str, mechanism: str | None, level: str = "framework", reason: str = "x") -> dict:
    """One GPU's row of the launch's enforcement."""
    return {"gpu": gpu, "level": level, "mechanism": mechanism, "reason": reason}


def status(mine_gib: float, used_gib: float, gpus: list[dict], cap_mb: int | None = 4096) -> dict:
    """kernel/status: GPU 0 (80 GiB, ``used_gib`` in use, this kernel's ``mine_gib`` of it) and
    GPU 1 (80 GiB, 10 in use); this kernel started with ``cap_mb`` enforced as ``gpus`` say."""

    def gpu(index: int, used: float, mine: float) -> dict:
        return {
            "index": index,
            "uuid": f"GPU-{index}",
            "name": "NVIDIA A100 80GB",
            "memory": {"total": 80 * GIB, "used": int(used * GIB), "free": int((80 - used) * GIB)},
            "utilization": {"gpu": 90, "memory": 40},
            "processes": [
                {"pid": 100 + index, "used_memory": int(mine * GIB), "kernel_id": "k-self",
                 "notebook": "nb.ipynb", "attributed_by": "pid", "mine": True,
                 "idle_seconds": None},
            ],
        }  # fmt: skip

    first = gpus[0]
    overall = {k: first[k] for k in ("level", "mechanism", "reason")}
    applied = {
        "memory_limit_mb": cap_mb,
        "framework_limit_mb": None if cap_mb is None else cap_mb - 512,
        "context_reserve_mb": 512,
        "enforcement": {**overall, "gpus": gpus},
    }
    per_gpu = [
        {"index": 0, "used_memory": int(mine_gib * GIB), "source": "nvml"},
        {"index": 1, "used_memory": int(0.5 * GIB), "source": "nvml"},
    ]
    return {
        "available": True,
        "simulated": False,
        "gpus": [gpu(0, used_gib, mine_gib), gpu(1, 10, 0.5)],
        "kernel": {
            "notebook": "nb.ipynb",
            "policy": {"memory_limit_mb": cap_mb, "sources": {}},
            "applied": applied,
            "enforcement": overall,
            "restart_required": False,
            "gpu_memory": {"per_gpu": per_gpu},
        },
    }


def framework_oom(framework: str, message: str):
    """An out-of-memory error of a framework's own class (module and name as it defines them)."""
    classes = {
        "torch": ("torch.cuda", "OutOfMemoryError"),
        "jax": ("jaxlib.xla_extension", "XlaRuntimeError"),
    }
    module, name = classes[framework]
    return find_out_of_memory(type(name, (RuntimeError,), {"__module__": module})(message))


@pytest.mark.tensorflow
def test_tensorflow_at_its_mps_limit_is_told_it_hit_the_driver_limit():
    """The issue's example: "this kernel hit its 4 GiB limit on GPU 0, set in the driver (MPS)"."""
    import tensorflow as tf

    # Given a kernel capped at 4 GiB under MPS that holds 3.5 GiB on GPU 0, which has room
    facts = status(3.5, 20, [held("GPU-0", "mps", reason=MPS_LIFTABLE)])
    # When TensorFlow's real error for a 1 GiB tensor on GPU 0 is explained
    error = tf.errors.ResourceExhaustedError(None, None, TF_MESSAGE)
    view = explain(find_out_of_memory(error), facts)
    # Then the line after the headline says it hit its limit, set in the driver by MPS
    said = (
        "This kernel hit its 4 GiB limit on GPU 0, set in the driver (MPS): it holds 3.5 GiB "
        "there and the allocation asked for 1.0 GiB more."
    )
    lines = view.text().split("\n")
    assert lines[0].startswith("jupyter-tfgpu: TensorFlow ran out of GPU memory on GPU 0")
    assert lines[1] == said
    # And the rest of the explanation is kept: holders, the policy it runs with
    assert "this kernel (nb.ipynb)" in view.text()
    assert "This kernel runs with: memory growth not set, memory limit 4 GiB" in view.text()
    # And the HTML says it right after the headline
    markup = view.html()
    assert html.escape(said) in markup
    assert markup.index("ran out of GPU memory") < markup.index(html.escape(said))


def test_pytorch_at_its_nvml_limit_is_told_it_hit_the_driver_limit():
    """NVML memory limits on the kernel's cgroup: set in the driver (NVML), whatever the level."""
    facts = status(3.8, 20, [held("GPU-0", "nvml_memory_limit", reason=UNVERIFIED)])
    view = explain(framework_oom("torch", TORCH_MESSAGE), facts)
    assert view.text().split("\n")[1] == (
        "This kernel hit its 4 GiB limit on GPU 0, set in the driver (NVML): it holds 3.8 GiB "
        "there and the allocation asked for 512.0 MiB more."
    )


def test_jax_at_its_framework_limit_is_told_it_was_the_frameworks_limit():
    """Framework settings: the framework's own limit, not the driver's."""
    facts = status(3.8, 20, [held("GPU-0", "framework_settings", reason=SETTINGS)])
    view = explain(framework_oom("jax", JAX_MESSAGE), facts)
    assert view.text().split("\n")[1] == (
        "This kernel hit its 4 GiB cap on GPU 0, held by JAX's own limit (JAX gets 3584 MiB of "
        "it), a framework setting, not a driver limit: it holds 3.8 GiB there and the allocation "
        "asked for 512.0 MiB more."
    )


def test_within_its_limit_on_a_full_gpu_the_gpu_ran_out():
    """Below its limit, with the GPU full: the limit is not blamed."""
    facts = status(1, 79.8, [held("GPU-0", "mps", reason=MPS_LIFTABLE)])
    view = explain(framework_oom("torch", TORCH_MESSAGE), facts)
    assert view.text().split("\n")[1] == (
        "This kernel was within its 4 GiB limit on GPU 0, set in the driver (MPS), holding "
        "1.0 GiB there: the GPU itself ran out."
    )


def test_the_limit_of_the_gpu_that_ran_out_is_the_one_said():
    """Per GPU: the launch's row for the GPU that ran out, by its UUID."""
    gpus = [held("GPU-1", "mps", reason=MPS_LIFTABLE), held("GPU-0", "framework_settings")]
    view = explain(framework_oom("torch", TORCH_MESSAGE), status(3.8, 20, gpus))
    assert (
        view.text()
        .split("\n")[1]
        .startswith("This kernel hit its 4 GiB cap on GPU 0, held by PyTorch's own limit")
    )


def test_without_the_figures_the_limit_is_said_without_saying_it_was_hit():
    """No size in the error: where the limit is set, not that it was reached."""
    facts = status(3.8, 20, [held("GPU-0", "mps", reason=MPS_LIFTABLE)])
    view = explain(framework_oom("jax", JAX_NO_SIZE), facts)
    assert view.text().split("\n")[1] == (
        "This kernel's 4 GiB limit on GPU 0 is set in the driver (MPS): an allocation that would "
        "take it past the limit fails there, whatever the framework."
    )


def test_a_kernel_with_no_cap_gets_the_explanation_as_before():
    """Level none: nothing about a limit."""
    facts = status(3.8, 79.8, [held("GPU-0", None, "none", "no memory cap")], cap_mb=None)
    view = explain(framework_oom("torch", TORCH_MESSAGE), facts)
    assert "limit on GPU" not in view.text() and "cap on GPU" not in view.text()


def test_a_launch_the_kernel_rewrote_into_nonsense_is_not_believed():
    """TFGPU_POLICY is the kernel's own to change: an unknown mechanism is no limit to name."""
    facts = status(3.8, 20, [held("GPU-0", "mps", reason=MPS_LIFTABLE)])
    del facts["kernel"]["applied"]["enforcement"], facts["kernel"]["enforcement"]
    running = {"memory_limit_mb": 4096, "enforcement": {"level": "driver", "mechanism": "magic"}}
    view = explain(framework_oom("torch", TORCH_MESSAGE), facts, running=running)
    assert "limit on GPU" not in view.text() and "cap on GPU" not in view.text()


# -- in a kernel the real server started -----------------------------------------------------

CAPPED = "oom/capped.ipynb"


@pytest.fixture
def tfgpu_config():
    """One simulated 16 GB GPU (a kernel's resident memory is its GPU memory there)."""
    return {
        "backend": "simulated",
        "simulated_gpus": [{"name": "Simulated GPU 16GB", "memory_gb": 16, "count": 1}],
        "sample_interval": 0.2,
        "history_seconds": 60,
    }


@pytest.mark.tensorflow
async def test_a_kernel_past_its_cap_is_told_it_hit_its_frameworks_limit(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """Mode off: the real server's launch says framework settings hold the cap, and TensorFlow's
    real error below it is explained as the framework's limit, the rest kept."""
    # Given a notebook capped at 256 MiB whose kernel holds more than that on GPU 0
    body = json.dumps({"memory_limit_mb": 256, "devices": [0]})
    await jp_fetch("tfgpu", "api", "policies", CAPPED, method="PUT", body=body)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import numpy as np\nimport tensorflow as tf\nblock = np.ones(300 * 2**20 // 8)"
        ),
        nbformat.v4.new_code_cell(
            f"raise tf.errors.ResourceExhaustedError(None, None, {TF_MESSAGE!r})"
        ),
    ]
    (jp_root_dir / "oom").mkdir(exist_ok=True)
    nbformat.write(nb, jp_root_dir / CAPPED)
    session = await start_session(jp_fetch, CAPPED)
    kernel_id = session["kernel"]["id"]
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)

    async def holds_past_its_cap() -> bool:
        kernel = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
        rows = kernel["gpu_memory"]["per_gpu"]
        return any(r["index"] == 0 and (r["used_memory"] or 0) > 256 * MIB for r in rows)

    async def after(index, cell):
        if index == 0:
            await poll(holds_past_its_cap, timeout=60)

    # When the first cell runs and the second raises TensorFlow's error for a 1 GiB tensor
    await execute(nb, km, after_cell=after)
    kernel = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
    # Then the server said framework settings hold its cap
    assert kernel["enforcement"]["mechanism"] == "framework_settings"
    # And the explanation says it hit its cap, held by TensorFlow's own limit, not the driver
    shown = outputs(nb.cells[1])
    for text in (shown["text/plain"], html.unescape(re.sub(r"<[^>]+>", "", shown["text/html"]))):
        assert "jupyter-tfgpu: TensorFlow ran out of GPU memory on GPU 0" in text
        assert re.search(
            r"This kernel hit its 256 MiB cap on GPU 0, held by TensorFlow's own limit( \(.*\))?, "
            r"a framework setting, not a driver limit: it holds [\d.]+ MiB there and the "
            r"allocation asked for 1\.0 GiB more\.",
            text,
        ), text
        # And keeps the rest: the policy it runs with
        assert "This kernel runs with: memory growth not set, memory limit 256 MiB" in text
    assert nb.cells[1].outputs[0]["ename"] == "ResourceExhaustedError"

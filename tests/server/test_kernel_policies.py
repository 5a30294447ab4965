"""A notebook's policy reaches its real kernel at start, with real TensorFlow (CPU build).

There is no GPU here, so TensorFlow's GPU calls themselves (set_memory_growth,
set_logical_device_configuration) cannot run for real: these tests check the environment, that
the hook runs once on import before any op, what it records, and the real TensorFlow paths a
CPU build has (no GPU visible, visible devices, "already initialized"). The GPU calls are spied
on in tests/bootstrap/test_bootstrap.py and exercised for real by scripts/gpu-check.sh on a GPU machine.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.kernel_helpers import run_code, run_json, start_session

pytestmark = pytest.mark.tensorflow

NOTEBOOK = "sub/dir/nb.ipynb"
POLICY = {
    "memory_growth": True,
    "memory_limit_mb": 1024,
    "devices": [0],
    "allocator": "cuda_malloc_async",
}
READ_ENV = """
import json, os
names = ["CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "TF_GPU_ALLOCATOR",
         "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
         "XLA_CLIENT_MEM_FRACTION", "PYTORCH_ALLOC_CONF",
         "PYTORCH_CUDA_ALLOC_CONF", "TFGPU_POLICY"]
print(json.dumps({n: os.environ.get(n) for n in names}))
"""


@pytest.fixture
def notebook(jp_root_dir):
    """An empty notebook file in a nested folder of the server root."""
    path = jp_root_dir / NOTEBOOK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return NOTEBOOK


async def put_policy(jp_fetch, path: str, policy: dict) -> dict:
    """Store a notebook's policy through the REST API."""
    response = await jp_fetch(
        "tfgpu", "api", "policies", *path.split("/"), method="PUT", body=json.dumps(policy)
    )
    return json.loads(response.body)


async def kernel_view(jp_fetch, kernel_id: str) -> dict:
    """GET kernels/{id}."""
    return json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)


async def test_policy_reaches_the_kernel_environment(jp_fetch, jp_serverapp, notebook):
    """The stored policy is rendered into the kernel's environment when it starts."""
    # Given a stored policy for a nested notebook
    await put_policy(jp_fetch, notebook, POLICY)
    gpu0 = jp_serverapp.web_app.settings["tfgpu_services"].sampler.devices[0].uuid
    # When JupyterLab opens the notebook (a session through the REST API)
    session = await start_session(jp_fetch, notebook)
    env = await run_json(jp_serverapp, session["kernel"]["id"], READ_ENV)
    # Then the kernel started with the policy in its environment
    assert env["CUDA_VISIBLE_DEVICES"] == gpu0
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["TF_GPU_ALLOCATOR"] == "cuda_malloc_async"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == str(round(1024 / (16 * 1024), 4))
    assert env["XLA_CLIENT_MEM_FRACTION"] is None
    assert env["PYTORCH_ALLOC_CONF"] == env["PYTORCH_CUDA_ALLOC_CONF"] == "backend:cudaMallocAsync"
    document = json.loads(env["TFGPU_POLICY"])
    assert document["notebook"] == notebook
    assert document["memory_limit_mb"] == 1024
    assert document["devices"] == [gpu0]
    # And the API shows what the kernel started with
    view = await kernel_view(jp_fetch, session["kernel"]["id"])
    assert view["notebook"] == notebook
    assert view["applied"]["devices"] == [gpu0]
    assert view["restart_required"] is False


async def test_import_tensorflow_runs_the_hook_once(jp_fetch, jp_serverapp, notebook):
    """`import tensorflow` triggers the bootstrap once, before any op, and it reports back."""
    # Given a kernel started with a policy
    await put_policy(jp_fetch, notebook, POLICY)
    session = await start_session(jp_fetch, notebook)
    kernel_id = session["kernel"]["id"]
    # When the notebook imports TensorFlow (twice, as notebooks do)
    record = await run_json(
        jp_serverapp,
        kernel_id,
        """
import json, sys
assert "tensorflow" not in sys.modules
import tensorflow as tf
import tensorflow
import tfgpu_bootstrap
print(json.dumps(tfgpu_bootstrap.record()))
""",
    )
    # Then the hook ran exactly once for tensorflow, and said why GPU settings were skipped
    tf_record = record["frameworks"]["tensorflow"]
    assert tf_record["hooked_at"]
    skipped = {item["setting"]: item["reason"] for item in tf_record["skipped"]}
    assert "no GPU visible" in skipped.get("memory_limit_mb", "")
    assert record["errors"] == []
    # And the server reads the kernel's report
    view = await kernel_view(jp_fetch, kernel_id)
    assert view["framework"]["frameworks"]["tensorflow"]["hooked_at"] == tf_record["hooked_at"]


async def test_cpu_only_policy_hides_every_gpu(jp_fetch, jp_serverapp, notebook):
    """`devices: []` leaves TensorFlow with no GPU, physical or visible."""
    # Given a CPU-only policy
    await put_policy(jp_fetch, notebook, {"devices": []})
    session = await start_session(jp_fetch, notebook)
    # When the kernel asks TensorFlow for GPUs
    seen = await run_json(
        jp_serverapp,
        session["kernel"]["id"],
        """
import json, os
import tensorflow as tf
print(json.dumps({"physical": tf.config.list_physical_devices("GPU"),
                  "visible": [d.name for d in tf.config.get_visible_devices("GPU")],
                  "cuda": os.environ["CUDA_VISIBLE_DEVICES"]}))
""",
    )
    # Then there are none
    assert seen == {"physical": [], "visible": [], "cuda": "-1"}


async def test_scripts_started_from_the_notebook_inherit_the_policy(
    jp_fetch, jp_serverapp, notebook
):
    """`!python train.py` and subprocesses get the same environment and the same bootstrap."""
    # Given a kernel with a policy
    await put_policy(jp_fetch, notebook, POLICY)
    session = await start_session(jp_fetch, notebook)
    # When the notebook starts a Python subprocess
    child = await run_json(
        jp_serverapp,
        session["kernel"]["id"],
        f"""
import json, os, subprocess
code = "import json, os, sys; print(json.dumps([os.environ.get('TFGPU_POLICY'), 'tfgpu_bootstrap' in sys.modules]))"
out = subprocess.run([{sys.executable!r}, "-c", code], capture_output=True, text=True, check=True)
mine = os.environ["TFGPU_POLICY"]
print(json.dumps([mine] + json.loads(out.stdout)))
""",
    )
    # Then it sees the kernel's policy and runs the bootstrap too
    mine, theirs, bootstrapped = child
    assert theirs == mine
    assert bootstrapped is True


async def test_restart_picks_up_a_changed_policy(jp_fetch, jp_serverapp, notebook):
    """After a policy change the kernel says "restart required"; a restart applies it."""
    # Given a running kernel with memory growth on
    await put_policy(jp_fetch, notebook, {"memory_growth": True})
    session = await start_session(jp_fetch, notebook)
    kernel_id = session["kernel"]["id"]
    # When the policy changes
    await put_policy(jp_fetch, notebook, {"memory_growth": False, "devices": [1]})
    # Then the kernel reports that it needs a restart
    assert (await kernel_view(jp_fetch, kernel_id))["restart_required"] is True
    # When it is restarted through jupyter_server's own API
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="{}")
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    # Then it runs with the new policy and no restart is required any more
    gpu1 = jp_serverapp.web_app.settings["tfgpu_services"].sampler.devices[1].uuid
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    assert env["CUDA_VISIBLE_DEVICES"] == gpu1
    assert (await kernel_view(jp_fetch, kernel_id))["restart_required"] is False


async def test_applying_after_tensorflow_initialized_says_restart(jp_fetch, jp_serverapp, notebook):
    """Re-applying once TensorFlow ran an op is skipped with a clear reason, not an error.

    TensorFlow raises "... cannot be modified after being initialized" only for a change of a
    device it has; the CPU build has no GPU, so the GPU list and the config call are spied on
    (raising TensorFlow's own message) while the op before them runs for real.
    """
    # Given a kernel with a memory policy where TensorFlow already ran an op
    await put_policy(jp_fetch, notebook, {"memory_growth": True})
    session = await start_session(jp_fetch, notebook)
    # When the policy is applied in-process again (as the %tfgpu magic does)
    result = await run_json(
        jp_serverapp,
        session["kernel"]["id"],
        """
import json
import tensorflow as tf
tf.constant(1.0) + 1.0
gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
tf.config.list_physical_devices = lambda kind=None: [gpu] if kind == "GPU" else []
def initialized(*args):
    raise RuntimeError("Physical devices cannot be modified after being initialized")
tf.config.experimental.set_memory_growth = initialized
import tfgpu_bootstrap
print(json.dumps(tfgpu_bootstrap.apply_now("tensorflow")))
""",
    )
    # Then the error becomes a reason that says to restart, and nothing is raised
    reasons = " ".join(item["reason"] for item in result["skipped"])
    assert "restart the kernel" in reasons
    assert result["errors"] == []


async def test_kernelspec_with_its_own_provisioner_is_left_alone(
    jp_fetch, jp_serverapp, jp_data_dir, notebook
):
    """A kernelspec that names another provisioner keeps it; that kernel gets no policy."""
    # Given a kernelspec that names jupyter_client's local provisioner
    spec_dir = jp_data_dir / "kernels" / "plain-python"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Plain Python",
                "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}},
            }
        )
    )
    await put_policy(jp_fetch, notebook, POLICY)
    # When a session starts with it
    session = await start_session(jp_fetch, notebook, kernel_name="plain-python")
    env = await run_json(jp_serverapp, session["kernel"]["id"], READ_ENV)
    # Then the kernel runs, without a policy, and the API says nothing was applied
    assert env["TFGPU_POLICY"] is None
    view = await kernel_view(jp_fetch, session["kernel"]["id"])
    assert view["applied"] is None
    assert view["provisioner"] == "LocalProvisioner"


async def test_kernel_output_shows_nothing_for_a_kernel_without_policy(jp_fetch, jp_serverapp):
    """A notebook with no policy and no admin default starts with no GPU variables set."""
    # Given no policy at all
    session = await start_session(jp_fetch, "plain.ipynb")
    # When the kernel reads its environment
    env = await run_json(jp_serverapp, session["kernel"]["id"], READ_ENV)
    # Then nothing is forced on it, but the bootstrap knows its (empty) policy
    assert env["CUDA_VISIBLE_DEVICES"] is None
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] is None
    assert json.loads(env["TFGPU_POLICY"])["memory_growth"] is None
    out = await run_code(jp_serverapp, session["kernel"]["id"], "print(1 + 1)")
    assert out.strip() == "2"


async def test_whole_number_floats_reach_the_kernel_as_integers(jp_fetch, jp_serverapp, notebook):
    """gpu_count 2.0 and intra_op_threads 4.0: the kernel starts with 2 GPUs and 4 threads."""
    # Given a policy sent with whole-number floats (JSON Schema counts them as integers)
    await put_policy(
        jp_fetch, notebook, {"devices": "auto", "gpu_count": 2.0, "intra_op_threads": 4.0}
    )
    # When its kernel starts and the notebook imports TensorFlow
    session = await start_session(jp_fetch, notebook)
    result = await run_json(
        jp_serverapp,
        session["kernel"]["id"],
        """
import json, os
import tensorflow as tf
print(json.dumps({
    "policy": json.loads(os.environ["TFGPU_POLICY"]),
    "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
}))
""",
    )
    # Then the kernel got two GPUs and TensorFlow four threads per op
    gpus = {d.uuid for d in jp_serverapp.web_app.settings["tfgpu_services"].sampler.devices}
    assert result["policy"]["gpu_count"] == 2
    assert result["policy"]["intra_op_threads"] == 4
    assert set(result["visible"].split(",")) == gpus
    assert result["intra_op_threads"] == 4


async def test_a_notebook_opened_through_a_symlinked_folder_keeps_its_path(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """link -> real: opening link/nb.ipynb applies link/nb.ipynb's policy, not real/nb.ipynb's."""
    # Given a notebook in a folder, a link to that folder, and a policy on each path
    (jp_root_dir / "real").mkdir()
    (jp_root_dir / "real" / "nb.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    (jp_root_dir / "link").symlink_to(jp_root_dir / "real")
    await put_policy(jp_fetch, "link/nb.ipynb", {"memory_growth": True})
    await put_policy(jp_fetch, "real/nb.ipynb", {"memory_growth": False})
    # When the notebook is opened through the link
    session = await start_session(jp_fetch, "link/nb.ipynb")
    kernel_id = session["kernel"]["id"]
    env = await run_json(jp_serverapp, kernel_id, READ_ENV)
    # Then the kernel has the policy of the path that was opened, and nothing asks for a restart
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert json.loads(env["TFGPU_POLICY"])["notebook"] == "link/nb.ipynb"
    view = await kernel_view(jp_fetch, kernel_id)
    assert view["notebook"] == "link/nb.ipynb"
    assert view["applied"]["notebook"] == "link/nb.ipynb"
    assert view["restart_required"] is False

"""The kernel bootstrap (jupyter_tfgpu/in_kernel/bootstrap/) in real Python subprocesses.

Each test starts ``sys.executable`` with the bootstrap folder on PYTHONPATH and a policy in
TFGPU_POLICY, exactly as the provisioner starts a kernel, so sitecustomize really runs at
start-up and the hook really fires on import. Nothing here imports the bootstrap in-process.
TensorFlow is the real CPU build; its GPU calls are spied on (there is no GPU to call).
"""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import pytest

from tests.bootstrap_helpers import BOOTSTRAP, HAS_TF, last_json, run_python

HAS_TORCH = importlib.util.find_spec("torch") is not None
NO_GPU = "no GPU visible"
RESTART = "TensorFlow already initialized its devices; restart the kernel to apply"
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the TensorFlow CPU build")


def python(code, policy=None, path=(), record_dir=None, env=None, timeout=240):
    """Run ``code`` in a fresh interpreter with the bootstrap first on PYTHONPATH."""
    extra = {}
    if policy is not None:
        extra["TFGPU_POLICY"] = policy if isinstance(policy, str) else json.dumps(policy)
    if record_dir is not None:
        extra["TFGPU_RECORD_DIR"] = str(record_dir)
    extra.update(env or {})
    return run_python(code, path=path, env=extra, timeout=timeout)


def warnings_in(proc):
    """Our stderr lines (TensorFlow's own start-up chatter is left out)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("jupyter-tfgpu:")]


def reasons(entry):
    """{setting: reason} of a framework record's skipped list."""
    return {item["setting"]: item["reason"] for item in entry["skipped"]}


# -- start-up -------------------------------------------------------------------------------------


def test_without_a_policy_nothing_is_installed():
    """No TFGPU_POLICY: our sitecustomize runs but installs no hook and loads nothing more."""
    # Given the bootstrap on PYTHONPATH and no policy
    # When a process starts (and later asks the bootstrap, as the %tfgpu magic may)
    proc = python(
        """
        import json, sys
        seen = {
            "sitecustomize": sys.modules["sitecustomize"].__file__,
            "finders": [type(f).__name__ for f in sys.meta_path],
            "loaded": "tfgpu_bootstrap" in sys.modules,
        }
        import tfgpu_bootstrap
        seen["record"] = tfgpu_bootstrap.record()
        print(json.dumps(seen))
        """
    )
    seen = last_json(proc)
    # Then it ran our sitecustomize, and that is all
    assert Path(seen["sitecustomize"]).parent == BOOTSTRAP
    assert "PostImportFinder" not in seen["finders"]
    assert seen["loaded"] is False
    # And the record says there is no policy, without a warning
    assert seen["record"]["policy"] is None
    assert seen["record"]["errors"] == []
    assert proc.stderr == ""


def test_with_a_policy_start_up_stays_light():
    """With a policy, start-up only installs the finder: no json, no framework, no policy code."""
    # Given a policy
    # When a process starts and imports nothing
    seen = last_json(
        python(
            """
            import sys
            heavy = ("json", "tfgpu_apply", "tensorflow", "torch", "jax", "importlib.util")
            loaded = [name for name in heavy if name in sys.modules]
            first = type(sys.meta_path[0]).__name__
            import json
            print(json.dumps({"loaded": loaded, "first": first}))
            """,
            policy={"memory_growth": True},
        )
    )
    # Then the finder is first on sys.meta_path and nothing heavy was imported
    assert seen == {"loaded": [], "first": "PostImportFinder"}


# -- chaining to the sitecustomize ours shadows ---------------------------------------------------


OTHER_SITECUSTOMIZE = """
import os, sys
os.environ["OTHER_SITECUSTOMIZE"] = "ran"
sys.path.append("/added-by-the-other-sitecustomize")
itself = sys.modules.get("sitecustomize") is sys.modules[__name__]
print("other sitecustomize ran as itself:", itself)
"""


@pytest.mark.parametrize("policy", [None, {"memory_growth": True}], ids=["no-policy", "policy"])
def test_an_existing_sitecustomize_still_runs(tmp_path, policy):
    """A sitecustomize later on sys.path runs too, with its changes to sys.path kept."""
    # Given another sitecustomize after ours on PYTHONPATH
    (tmp_path / "sitecustomize.py").write_text(OTHER_SITECUSTOMIZE)
    # When a process starts
    proc = python(
        """
        import json, os, sys
        print(json.dumps({
            "env": os.environ.get("OTHER_SITECUSTOMIZE"),
            "ours": sys.modules["sitecustomize"].__file__,
            "path": sys.path,
            "hooked": any(type(f).__name__ == "PostImportFinder" for f in sys.meta_path),
        }))
        """,
        policy=policy,
        path=[tmp_path],
    )
    seen = last_json(proc)
    # Then both ran: theirs as the module "sitecustomize", ours kept its place afterwards
    assert "other sitecustomize ran as itself: True" in proc.stdout
    assert seen["env"] == "ran"
    assert "/added-by-the-other-sitecustomize" in seen["path"]
    assert Path(seen["ours"]).parent == BOOTSTRAP
    assert str(BOOTSTRAP) in seen["path"]
    assert seen["hooked"] is (policy is not None)


def test_a_broken_sitecustomize_does_not_stop_ours(tmp_path):
    """An error in the chained sitecustomize is reported as site.py would, and ours goes on."""
    # Given another sitecustomize that raises
    (tmp_path / "sitecustomize.py").write_text("raise RuntimeError('theirs broke')\n")
    # When a process starts with a policy
    proc = python(
        "import sys; print(type(sys.meta_path[0]).__name__)",
        policy={"memory_growth": True},
        path=[tmp_path],
    )
    # Then the error is shown and our hook is installed anyway
    assert proc.returncode == 0, proc.stderr
    assert "Error in sitecustomize" in proc.stderr
    assert "RuntimeError: theirs broke" in proc.stderr
    assert proc.stdout.strip() == "PostImportFinder"


# -- the hook with the real TensorFlow CPU build --------------------------------------------------


@pytest.fixture(scope="module")
def tf_hooked(tmp_path_factory):
    """One process that imports TensorFlow three ways under a policy, with a record folder."""
    record_dir = tmp_path_factory.mktemp("records") / "kernel-1"
    proc = python(
        """
        import json, sys
        assert "tensorflow" not in sys.modules
        import tensorflow as tf
        import tensorflow
        import tensorflow.compat.v1
        import tfgpu_bootstrap
        finder = sys.meta_path[0]
        print(json.dumps({
            "record": tfgpu_bootstrap.record(),
            "loader_restored": "exec_module" not in vars(tf.__spec__.loader),
            "finder_done": finder.find_spec("tensorflow") is None,
        }))
        """,
        policy={
            "memory_growth": True,
            "memory_limit_mb": 1024,
            "devices": None,
            "notebook": "a.ipynb",
        },
        record_dir=record_dir,
    )
    return proc, last_json(proc), record_dir


@pytest.mark.tensorflow
@needs_tf
def test_import_tensorflow_runs_the_hook_once(tf_hooked):
    """`import tensorflow` fires the hook once; without a GPU each GPU setting says why."""
    # Given a policy with GPU settings and no GPU in this machine
    proc, seen, _ = tf_hooked
    # When TensorFlow is imported three ways (fixture)
    entry = seen["record"]["frameworks"]["tensorflow"]
    # Then the policy was applied once, at import, and every GPU setting was skipped with a reason
    assert entry["apply_count"] == 1
    assert entry["source"] == "import"
    assert entry["hooked_at"] <= entry["applied_at"]
    assert entry["applied"] == []
    assert reasons(entry) == {"memory_limit_mb": NO_GPU, "memory_growth": NO_GPU}
    assert seen["record"]["errors"] == []
    assert seen["record"]["policy"]["notebook"] == "a.ipynb"
    # (TensorFlow imports Keras as it loads; Keras is hooked for its dtype policy)
    assert set(seen["record"]["frameworks"]) - {"keras"} == {"tensorflow"}
    # And the hook took itself out of TensorFlow's loader and out of later imports
    assert seen["loader_restored"] is True
    assert seen["finder_done"] is True
    assert warnings_in(proc) == []


@pytest.mark.tensorflow
@needs_tf
def test_the_record_is_written_for_the_server(tf_hooked):
    """The record lands in $TFGPU_RECORD_DIR/<pid>.json, mode 0600, with no temp file left."""
    # Given the process of the fixture, which had TFGPU_RECORD_DIR set
    _, seen, record_dir = tf_hooked
    record = seen["record"]
    # When the server looks for that process's record
    files = sorted(p.name for p in record_dir.iterdir())
    written = record_dir / f"{record['pid']}.json"
    # Then it is there, private to the user, and says what record() says
    assert files == [written.name]
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(record_dir.stat().st_mode) == 0o700
    assert json.loads(written.read_text()) == record


@pytest.mark.tensorflow
@needs_tf
def test_cpu_only_policy_hides_every_gpu_from_tensorflow():
    """`devices: []` leaves TensorFlow with no GPU, physical or visible, and ops still run."""
    # Given a CPU-only policy
    # When the process imports TensorFlow and asks for GPUs
    seen = last_json(
        python(
            """
            import json
            import tensorflow as tf
            import tfgpu_bootstrap
            print(json.dumps({
                "visible": tf.config.get_visible_devices("GPU"),
                "physical": tf.config.list_physical_devices("GPU"),
                "op": int(tf.constant(1) + 1),
                "record": tfgpu_bootstrap.record()["frameworks"]["tensorflow"],
            }))
            """,
            policy={"devices": [], "memory_growth": True},
        )
    )
    # Then there are none, the hiding is recorded, and growth says why it was skipped
    assert seen["visible"] == [] and seen["physical"] == []
    assert seen["op"] == 2
    assert seen["record"]["applied"] == [{"setting": "devices", "value": []}]
    assert reasons(seen["record"]) == {"memory_growth": NO_GPU}


@pytest.mark.tensorflow
@needs_tf
def test_reapplying_after_tensorflow_initialized_never_raises():
    """apply_now after an op ran: real TF, no exception, and nothing claimed that did not happen.

    TensorFlow 2.21 raises "cannot be modified after being initialized" only when a call would
    change its device configuration. A CPU build has no GPU to hide, so ``devices: []`` is
    already in effect and TF accepts it; the restart reason itself is checked with TF's exact
    message in test_tensorflow_gpu_calls_through_spies.
    """
    # Given a CPU-only process where TensorFlow already ran an op
    proc = python(
        """
        import json
        import tensorflow as tf
        tf.constant(1.0) + 1.0
        import tfgpu_bootstrap
        result = tfgpu_bootstrap.apply_now("tensorflow")
        changed = tfgpu_bootstrap.apply_now("tensorflow", {"devices": [], "memory_limit_mb": 512})
        print(json.dumps({
            "result": result, "changed": changed,
            "visible": tf.config.get_visible_devices("GPU"),
            "entry": tfgpu_bootstrap.record()["frameworks"]["tensorflow"],
        }))
        """,
        policy={"devices": [], "memory_growth": False},
    )
    # When the policy is applied in-process again, then with a new policy
    seen = last_json(proc)
    # Then each call returned what it did, raised nothing and warned nothing
    assert seen["result"]["errors"] == []
    assert seen["result"]["applied"] == [{"setting": "devices", "value": []}]
    assert reasons(seen["result"]) == {"memory_growth": NO_GPU}
    assert reasons(seen["changed"]) == {"memory_limit_mb": NO_GPU}
    assert seen["visible"] == []
    assert seen["entry"]["apply_count"] == 3
    assert seen["entry"]["source"] == "apply_now"
    assert warnings_in(proc) == []


@pytest.mark.tensorflow
@needs_tf
def test_broken_policy_json_keeps_the_import_working():
    """A policy that is not JSON: TensorFlow imports and works, with one clear warning."""
    # Given a truncated policy
    # When the process imports TensorFlow and re-applies the (still broken) policy
    proc = python(
        """
        import json
        import tensorflow as tf
        import tfgpu_bootstrap
        tfgpu_bootstrap.apply_now("tensorflow")
        print(json.dumps({"op": int(tf.constant(2) * 2), "record": tfgpu_bootstrap.record()}))
        """,
        policy='{"memory_growth": tru',
    )
    seen = last_json(proc)
    # Then the import worked, nothing was applied, and exactly one warning says why
    assert seen["op"] == 4
    assert seen["record"]["policy"] is None
    assert reasons(seen["record"]["frameworks"]["tensorflow"]) == {
        "policy": "the policy could not be read (see errors)"
    }
    [warning] = warnings_in(proc)
    assert "TFGPU_POLICY is not valid JSON" in warning
    assert "no GPU policy applied" in warning


@pytest.mark.tensorflow
@needs_tf
def test_a_subprocess_of_a_subprocess_applies_the_policy(tmp_path):
    """`!python train.py` that starts its own workers: the grandchild is hooked as well."""
    # Given a child that imports no framework and starts a grandchild that imports TensorFlow
    grandchild = (
        "import json, os, tensorflow as tf, tfgpu_bootstrap; "
        "print(json.dumps([tfgpu_bootstrap.record(), tf.config.get_visible_devices('GPU')]))"
    )
    # When the child runs
    proc = python(
        f"""
        import json, os, subprocess, sys
        out = subprocess.run([sys.executable, "-c", {grandchild!r}],
                             capture_output=True, text=True, check=True).stdout
        record, visible = json.loads(out.strip().splitlines()[-1])
        print(json.dumps({{"me": os.getpid(), "record": record, "visible": visible,
                          "tf_here": "tensorflow" in sys.modules}}))
        """,
        policy={"devices": []},
        record_dir=tmp_path,
    )
    seen = last_json(proc)
    # Then the grandchild applied the policy and reported it; the child imported nothing
    assert seen["record"]["ppid"] == seen["me"]
    assert seen["record"]["frameworks"]["tensorflow"]["applied"] == [
        {"setting": "devices", "value": []}
    ]
    assert seen["visible"] == []
    assert seen["tf_here"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{seen['record']['pid']}.json"]


SPY_SCENARIOS = r"""
import json, os, sys
import tensorflow as tf
import tfgpu_bootstrap

GPUS = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in (0, 1)]
calls, fail = [], {}

def spy(name, result=None):
    def call(*args):
        calls.append([name] + [getattr(a, "name", None) or a for a in args])
        if name in fail:
            raise fail[name]
        return result
    return call

def limits(configs):
    return [c.memory_limit for c in configs]

tf.config.list_physical_devices = spy("list_physical_devices", GPUS)
tf.config.set_visible_devices = spy("set_visible_devices")
real_logical = spy("set_logical_device_configuration")
tf.config.set_logical_device_configuration = lambda gpu, configs: real_logical(gpu, limits(configs))
tf.config.experimental.set_memory_growth = spy("set_memory_growth")

def scenario(policy, env=None, errors=None):
    calls.clear(); fail.clear(); fail.update(errors or {})
    os.environ.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
    os.environ.update(env or {})
    result = tfgpu_bootstrap.apply_tensorflow(tf, policy)
    return {"calls": list(calls), "result": result}

INIT = "cannot be modified after being initialized"
print(json.dumps({
    "growth": scenario({"memory_growth": True}),
    "limit_env": scenario({"memory_limit_mb": 4096, "memory_growth": True},
                          env={"TF_FORCE_GPU_ALLOW_GROWTH": "true"}),
    "limit_no_env": scenario({"memory_limit_mb": 4096, "memory_growth": True}),
    "cpu_only": scenario({"devices": [], "memory_growth": True}),
    "initialized": scenario(
        {"devices": [], "memory_growth": True},
        errors={"set_visible_devices": RuntimeError("Visible devices " + INIT)}),
    "initialized_growth": scenario(
        {"memory_growth": False},
        errors={"set_memory_growth": RuntimeError("Physical devices " + INIT)}),
    "initialized_limit": scenario(
        {"memory_limit_mb": 2048},
        errors={"set_logical_device_configuration": RuntimeError("Virtual devices " + INIT)}),
    "broken": scenario({"memory_growth": True}, errors={"set_memory_growth": ValueError("boom")}),
    "nothing": scenario({"memory_growth": None, "memory_limit_mb": None, "devices": None}),
}))
"""


@pytest.fixture(scope="module")
def spied():
    """Every GPU scenario, run in one process against spies on TensorFlow's config calls."""
    return last_json(python(SPY_SCENARIOS))


@pytest.mark.tensorflow
@needs_tf
def test_tensorflow_gpu_calls_through_spies(spied):
    """The GPU call path, with TF's config functions replaced by spies and two fake GPUs.

    TensorFlow's GPU calls can only be spied on without a GPU: the CPU build lists no GPU and
    refuses devices it does not know. Everything else (TF itself, PhysicalDevice,
    LogicalDeviceConfiguration) is real. scripts/gpu-check.sh runs them for real on a GPU.
    """
    gpu0, gpu1 = "/physical_device:GPU:0", "/physical_device:GPU:1"
    # Given two GPUs and memory growth only / When applied / Then growth is set on each GPU
    growth = spied["growth"]
    assert growth["calls"] == [
        ["list_physical_devices", "GPU"],
        ["set_memory_growth", gpu0, True],
        ["set_memory_growth", gpu1, True],
    ]
    assert growth["result"]["applied"] == [
        {"setting": "memory_growth", "value": True, "devices": [gpu0, gpu1]}
    ]
    # Given a memory limit and growth / When applied / Then virtual devices, never set_memory_growth
    limit = spied["limit_env"]
    assert limit["calls"] == [
        ["list_physical_devices", "GPU"],
        ["set_logical_device_configuration", gpu0, [4096]],
        ["set_logical_device_configuration", gpu1, [4096]],
    ]
    assert limit["result"]["applied"] == [
        {"setting": "memory_limit_mb", "value": 4096, "devices": [gpu0, gpu1]},
        {"setting": "memory_growth", "value": True, "via": "TF_FORCE_GPU_ALLOW_GROWTH"},
    ]
    # And without TF_FORCE_GPU_ALLOW_GROWTH from the provisioner, growth says it is not in force
    assert (
        "TF_FORCE_GPU_ALLOW_GROWTH is None"
        in reasons(spied["limit_no_env"]["result"])["memory_growth"]
    )


@pytest.mark.tensorflow
@needs_tf
def test_cpu_only_policy_with_gpus_through_spies(spied):
    """`devices: []` with GPUs present hides them, and memory settings say the GPUs are hidden."""
    cpu_only = spied["cpu_only"]
    assert cpu_only["calls"][0] == ["set_visible_devices", [], "GPU"]
    assert cpu_only["result"]["applied"] == [{"setting": "devices", "value": []}]
    assert reasons(cpu_only["result"]) == {
        "memory_growth": "GPUs hidden by the policy (devices: [])"
    }


@pytest.mark.tensorflow
@needs_tf
def test_already_initialized_tensorflow_means_restart_through_spies(spied):
    """TF's real "cannot be modified after being initialized" errors become the restart reason."""
    assert reasons(spied["initialized"]["result"])["devices"] == RESTART
    assert reasons(spied["initialized_growth"]["result"]) == {"memory_growth": RESTART}
    assert reasons(spied["initialized_limit"]["result"]) == {"memory_limit_mb": RESTART}
    for name in ("initialized", "initialized_growth", "initialized_limit"):
        assert spied[name]["result"]["errors"] == []


@pytest.mark.tensorflow
@needs_tf
def test_other_tensorflow_errors_are_recorded_not_raised(spied):
    """Any other error from TF is a skipped setting plus an error entry; the caller goes on."""
    broken = spied["broken"]["result"]
    assert reasons(broken) == {"memory_growth": "failed: ValueError: boom"}
    assert broken["errors"] == ["memory_growth: ValueError: boom"]
    # And a policy without GPU settings does not even list the GPUs (no device start-up cost)
    assert spied["nothing"]["calls"] == []


# -- failures of the hook itself, torch and jax with stand-in packages ----------------------------


def test_a_failing_hook_never_breaks_the_import(tmp_path):
    """If applying the policy fails, the framework still imports and one warning says so."""
    # Given a stand-in `tensorflow` whose config cannot be used (the real one is tested above)
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text("config = None\nVALUE = 42\n")
    # When it is imported twice and re-applied
    proc = python(
        """
        import json, tensorflow, tfgpu_bootstrap
        import tensorflow as again
        tfgpu_bootstrap.apply_now("tensorflow")
        print(json.dumps({"value": again.VALUE, "record": tfgpu_bootstrap.record()}))
        """,
        policy={"memory_growth": True},
        path=[tmp_path],
    )
    seen = last_json(proc)
    # Then the module is there, the errors are recorded, and stderr has one warning
    assert seen["value"] == 42
    assert len(seen["record"]["errors"]) == 2
    assert "AttributeError" in seen["record"]["errors"][0]["message"]
    [warning] = warnings_in(proc)
    assert warning.startswith("jupyter-tfgpu: tensorflow: could not apply the policy")


STAND_IN_TORCH = """
# Mimics the contract of torch.cuda._lazy_call: queued until CUDA initializes, then run.
_queued, _initialized, fractions = [], False, {}

def is_initialized():
    return _initialized

def _lazy_call(fn):
    if _initialized:
        fn()
    else:
        _queued.append(fn)

def init():
    global _initialized
    _initialized = True
    for fn in _queued:
        fn()

def device_count():
    return 2

class _Props:
    total_memory = 4 * 2**30

def get_device_properties(index):
    return _Props()

def set_per_process_memory_fraction(fraction, device):
    fractions[device] = fraction
"""


def test_torch_cap_waits_for_cuda_to_initialize(tmp_path):
    """The torch memory cap is pending at import and applied when CUDA initializes.

    A stand-in `torch` with torch.cuda's lazy-call contract (this environment has no torch);
    test_real_torch_import_is_hooked runs the real one where it is installed.
    """
    # Given a stand-in torch built for CUDA, and a 1 GiB limit
    package = tmp_path / "torch"
    package.mkdir()
    (package / "__init__.py").write_text("from . import cuda, version\n")
    (package / "version.py").write_text("cuda = '12.4'\n")
    (package / "cuda.py").write_text(STAND_IN_TORCH)
    # When torch is imported, then CUDA initializes
    proc = python(
        """
        import json, torch, tfgpu_bootstrap
        before = tfgpu_bootstrap.record()["frameworks"]["torch"]
        torch.cuda.init()
        after = tfgpu_bootstrap.record()["frameworks"]["torch"]
        print(json.dumps({"before": before, "after": after, "fractions": torch.cuda.fractions}))
        """,
        policy={"memory_limit_mb": 1024},
        path=[tmp_path],
        record_dir=tmp_path / "records",
    )
    seen = last_json(proc)
    # Then it was pending first, then each device got a quarter of its 4 GiB
    assert seen["before"]["pending"] == [
        {"setting": "memory_limit_mb", "value": 1024, "reason": "pending until CUDA initializes"}
    ]
    assert seen["after"]["pending"] == []
    assert seen["after"]["applied"] == [
        {"setting": "memory_limit_mb", "value": 1024, "fractions": {"0": 0.25, "1": 0.25}}
    ]
    assert seen["fractions"] == {"0": 0.25, "1": 0.25}
    # And the server's copy was updated when CUDA initialized
    [written] = (tmp_path / "records").iterdir()
    assert (
        json.loads(written.read_text())["frameworks"]["torch"]["applied"] == seen["after"]["applied"]
    )
    assert warnings_in(proc) == []


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_real_torch_import_is_hooked():
    """Real torch: hooked once at import; without a GPU the cap is pending or says why."""
    # Given a memory limit
    # When torch is imported and used on the CPU
    seen = last_json(
        python(
            """
            import json, torch, tfgpu_bootstrap
            torch.zeros(2) + 1
            print(json.dumps(tfgpu_bootstrap.record()["frameworks"]["torch"]))
            """,
            policy={"memory_limit_mb": 1024},
        )
    )
    # Then the hook ran once and the cap is accounted for
    assert seen["apply_count"] == 1
    accounted = seen["applied"] + seen["skipped"] + seen["pending"]
    assert [item["setting"] for item in accounted] == ["memory_limit_mb"]


def test_jax_records_the_environment_it_will_read(tmp_path):
    """JAX has no in-process knob: the record shows the variables it reads at backend start."""
    # Given a stand-in jax (JAX is not installed here) and the provisioner's variables
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("")
    # When it is imported
    entry = last_json(
        python(
            "import json, jax, tfgpu_bootstrap; "
            "print(json.dumps(tfgpu_bootstrap.record()['frameworks']['jax']))",
            policy={"memory_growth": True},
            path=[tmp_path],
            env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "CUDA_VISIBLE_DEVICES": "-1"},
        )
    )
    # Then the record has those values and claims nothing else
    assert entry["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert entry["env"]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert entry["env"]["XLA_CLIENT_MEM_FRACTION"] is None
    assert entry["applied"] == [] and entry["skipped"] == []

"""The bootstrap applies the framework limit the server sent (the cap less the CUDA context
reserve), not the raw cap, and its record names both. Real Python subprocesses with the
bootstrap on PYTHONPATH; TensorFlow is the real CPU build with its GPU calls spied on, torch a
stand-in with torch.cuda's lazy-call contract (see test_bootstrap.py)."""

from __future__ import annotations

import json

import pytest

from tests.bootstrap.test_bootstrap import STAND_IN_TORCH, python, warnings_in
from tests.bootstrap_helpers import HAS_TF, last_json

needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the TensorFlow CPU build")
CAP = {"memory_limit_mb": 4096, "framework_limit_mb": 3546, "context_reserve_mb": 550}

SPY_TENSORFLOW = r"""
import json
import tensorflow as tf
import tfgpu_bootstrap

GPUS = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
limits = []
tf.config.list_physical_devices = lambda kind=None: GPUS
tf.config.set_logical_device_configuration = (
    lambda gpu, configs: limits.extend(c.memory_limit for c in configs)
)
result = tfgpu_bootstrap.apply_tensorflow(tf, tfgpu_bootstrap.load_policy(%r)[0])
print(json.dumps({"limits": limits, "applied": result["applied"], "skipped": result["skipped"]}))
"""


@pytest.mark.tensorflow
@needs_tf
@pytest.mark.parametrize(
    ("policy", "limit", "facts"),
    [
        (CAP, 3546, {"framework_limit_mb": 3546, "context_reserve_mb": 550}),
        ({"memory_limit_mb": 4096}, 4096, {}),  # a document from an older server
        ({"memory_limit_mb": 4096, "framework_limit_mb": 9999}, 4096, {"framework_limit_mb": 4096,
                                                                       "context_reserve_mb": None}),
    ],
    ids=["framework-limit", "cap-only", "never-above-the-cap"],
)
def test_tensorflow_gets_the_framework_limit(policy, limit, facts):
    """TF's virtual device gets the framework limit; the record keeps the cap as the value."""
    seen = last_json(python(SPY_TENSORFLOW % (json.dumps(policy),)))
    assert seen["limits"] == [limit]
    [applied] = seen["applied"]
    assert applied == {
        "setting": "memory_limit_mb",
        "value": 4096,
        "devices": ["/physical_device:GPU:0"],
        **facts,
    }


def test_torch_gets_the_framework_limits_fraction(tmp_path):
    """torch's per-process fraction is the framework limit's share of each device (4 GiB)."""
    package = tmp_path / "torch"
    package.mkdir()
    (package / "__init__.py").write_text("from . import cuda, version\n")
    (package / "version.py").write_text("cuda = '12.4'\n")
    (package / "cuda.py").write_text(STAND_IN_TORCH)
    proc = python(
        """
        import json, torch, tfgpu_bootstrap
        torch.cuda.init()
        entry = tfgpu_bootstrap.record()["frameworks"]["torch"]
        print(json.dumps({"applied": entry["applied"], "fractions": torch.cuda.fractions}))
        """,
        policy={"memory_limit_mb": 2048, "framework_limit_mb": 1024, "context_reserve_mb": 1024},
        path=[tmp_path],
    )
    seen = last_json(proc)
    assert seen["fractions"] == {"0": 0.25, "1": 0.25}
    assert seen["applied"] == [
        {
            "setting": "memory_limit_mb",
            "value": 2048,
            "framework_limit_mb": 1024,
            "context_reserve_mb": 1024,
            "fractions": {"0": 0.25, "1": 0.25},
        }
    ]
    assert warnings_in(proc) == []


@pytest.mark.parametrize("bad", ["3546", 0, True, -5])
def test_a_bad_framework_limit_is_refused_by_name(bad):
    """A framework limit that is not a number of MiB >= 1 is unset, with the field's name."""
    seen = last_json(
        python(
            "import json, tfgpu_bootstrap; r = tfgpu_bootstrap.record(); "
            "print(json.dumps({'policy': r['policy'], 'errors': r['errors']}))",
            policy={"memory_limit_mb": 4096, "framework_limit_mb": bad},
        )
    )
    assert seen["policy"]["framework_limit_mb"] is None
    assert seen["policy"]["memory_limit_mb"] == 4096
    assert "'framework_limit_mb' must be a number of MiB >= 1" in seen["errors"][0]["message"]

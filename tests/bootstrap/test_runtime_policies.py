"""TensorFlow runtime settings of a policy, read back in a real kernel (TensorFlow CPU build).

Every setting here has a visible effect on the CPU build, so each is read back from TensorFlow
or Keras in the kernel after `import tensorflow`, not assumed from the record.
"""

from __future__ import annotations

import json

import pytest

from tests.kernel_helpers import run_json, start_session

pytestmark = pytest.mark.tensorflow

RUNTIME = {
    "mixed_precision": "mixed_bfloat16",
    "xla_jit": True,
    "tf32": False,
    "deterministic": True,
    "soft_placement": False,
    "log_placement": False,
    "intra_op_threads": 3,
    "inter_op_threads": 2,
}
READ_BACK = """
import json
import tensorflow as tf
import keras
from tensorflow.python.framework import config as tf_config
import tfgpu_bootstrap
record = tfgpu_bootstrap.record()["frameworks"]["tensorflow"]
print(json.dumps({
    "mixed_precision": keras.mixed_precision.global_policy().name,
    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    "xla_jit": tf.config.optimizer.get_jit(),
    "deterministic": tf_config.is_op_determinism_enabled(),
    "soft_placement": tf.config.get_soft_device_placement(),
    "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
    "applied": sorted(item["setting"] for item in record["applied"]),
    "skipped": record["skipped"],
}))
"""


async def test_runtime_settings_are_applied_before_the_first_op(jp_fetch, jp_serverapp):
    """Each runtime field of the notebook's policy is in force right after `import tensorflow`."""
    # Given a notebook policy with every runtime setting
    await jp_fetch(
        "tfgpu", "api", "policies", "train.ipynb", method="PUT", body=json.dumps(RUNTIME)
    )
    session = await start_session(jp_fetch, "train.ipynb")
    # When the kernel imports TensorFlow and reads each setting back
    seen = await run_json(jp_serverapp, session["kernel"]["id"], READ_BACK)
    # Then TensorFlow and Keras report the policy's values
    assert seen["mixed_precision"] == "mixed_bfloat16"
    assert seen["intra_op_threads"] == 3
    assert seen["inter_op_threads"] == 2
    assert seen["xla_jit"] == "autoclustering"
    assert seen["deterministic"] is True
    assert seen["soft_placement"] is False
    assert seen["tf32"] is False
    # And the bootstrap's record lists each as applied, none skipped
    assert set(RUNTIME) <= set(seen["applied"])
    assert seen["skipped"] == []


async def test_changing_threads_after_an_op_says_restart(jp_fetch, jp_serverapp):
    """Threads cannot change once TensorFlow ran: re-applying says to restart, no error."""
    session = await start_session(jp_fetch, "late.ipynb")
    result = await run_json(
        jp_serverapp,
        session["kernel"]["id"],
        """
import json
import tensorflow as tf
tf.constant(1.0) + 1.0
import tfgpu_bootstrap
print(json.dumps(tfgpu_bootstrap.apply_now("tensorflow", {"intra_op_threads": 5})))
""",
    )
    assert [s["setting"] for s in result["skipped"]] == ["intra_op_threads"]
    assert "restart the kernel" in result["skipped"][0]["reason"]
    assert result["errors"] == []


@pytest.fixture
def tfgpu_config():
    """The admin forces determinism, forbids placement logging and caps threads at 4."""
    return {
        "backend": "simulated",
        "forced_policy": {"deterministic": True, "log_placement": False},
        "max_threads": 4,
    }


async def test_admin_forced_fields_and_thread_cap(jp_fetch, jp_serverapp):
    """Forced fields and the thread cap are refused (403) when asked for, and applied."""
    from tornado.httpclient import HTTPClientError

    for body, cap in (
        ({"log_placement": True}, "forced_policy"),
        ({"deterministic": False}, "forced_policy"),
        ({"intra_op_threads": 8}, "max_threads"),
    ):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("tfgpu", "api", "policies", "a.ipynb", method="PUT", body=json.dumps(body))
        assert err.value.code == 403
        assert cap in json.loads(err.value.response.body)["message"]
    # A notebook without a policy still gets the forced values
    view = json.loads((await jp_fetch("tfgpu", "api", "policies", "b.ipynb")).body)
    assert view["effective"]["deterministic"] is True
    assert view["effective"]["sources"]["deterministic"] == "cap"
    session = await start_session(jp_fetch, "b.ipynb")
    seen = await run_json(jp_serverapp, session["kernel"]["id"], READ_BACK)
    assert seen["deterministic"] is True

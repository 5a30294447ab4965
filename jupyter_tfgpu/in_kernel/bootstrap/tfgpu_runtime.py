"""Runtime settings of a policy beyond memory: precision, XLA, TF32, determinism, placement,
threads: their check (``check``) and how each framework gets them. Loaded by ``tfgpu_apply`` with
the first framework; imports no framework itself.

Each ``apply_runtime_*`` adds to the framework's result what it applied, and what it skipped and why
(including "this framework has no such knob"), the same way the memory settings are recorded.
"""

import sys

from tfgpu_result import attempt, skip

# Fields this module applies, in the order they are applied.
RUNTIME_FIELDS = (
    "mixed_precision",
    "xla_jit",
    "tf32",
    "deterministic",
    "soft_placement",
    "log_placement",
    "intra_op_threads",
    "inter_op_threads",
)
PRECISIONS = ("mixed_float16", "mixed_bfloat16", "float32")
KERAS_PENDING = "applied when Keras is imported"


def check(policy: dict, reject) -> None:
    """Unset fields of a TFGPU_POLICY document with the wrong type (``reject(field, expected)``)."""
    if policy.get("mixed_precision") not in (*PRECISIONS, None):
        reject("mixed_precision", f"one of {', '.join(PRECISIONS)} or null")
    for field in ("xla_jit", "tf32", "deterministic", "soft_placement", "log_placement"):
        if not isinstance(policy.get(field), (bool, type(None))):
            reject(field, "true, false or null")
    for field in ("intra_op_threads", "inter_op_threads"):
        value = policy.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            reject(field, "a number of threads >= 1 or null")


def _wanted(policy: dict):
    return [(f, policy.get(f)) for f in RUNTIME_FIELDS if policy.get(f) is not None]


def apply_runtime_tensorflow(tf, policy: dict, result: dict) -> None:
    """TensorFlow's knobs, each config call recorded (restart-aware)."""
    config = tf.config
    for field, value in _wanted(policy):
        if field == "mixed_precision":
            keras = sys.modules.get("keras")
            if keras is not None:
                attempt(
                    result, field, value, lambda: keras.mixed_precision.set_global_policy(value)
                )
            else:
                result["pending"].append(
                    {"setting": field, "value": value, "reason": KERAS_PENDING}
                )
        elif field == "xla_jit":
            attempt(result, field, value, lambda: config.optimizer.set_jit(value))
        elif field == "tf32":
            attempt(
                result,
                field,
                value,
                lambda: config.experimental.enable_tensor_float_32_execution(value),
            )
        elif field == "deterministic":
            if value:
                attempt(result, field, value, config.experimental.enable_op_determinism)
            elif hasattr(config.experimental, "disable_op_determinism"):
                attempt(result, field, value, config.experimental.disable_op_determinism)
            else:
                skip(result, field, value, "off is TensorFlow's default; nothing to apply")
        elif field == "soft_placement":
            attempt(result, field, value, lambda: config.set_soft_device_placement(value))
        elif field == "log_placement":
            attempt(result, field, value, lambda: tf.debugging.set_log_device_placement(value))
        elif field == "intra_op_threads":
            attempt(
                result,
                field,
                value,
                lambda: config.threading.set_intra_op_parallelism_threads(value),
            )
        elif field == "inter_op_threads":
            attempt(
                result,
                field,
                value,
                lambda: config.threading.set_inter_op_parallelism_threads(value),
            )


def apply_runtime_keras(keras, policy: dict, result: dict) -> None:
    """Keras's global dtype policy (the only Keras knob of a policy)."""
    value = policy.get("mixed_precision")
    if value is not None:
        attempt(
            result, "mixed_precision", value, lambda: keras.mixed_precision.set_global_policy(value)
        )


def apply_runtime_torch(torch, policy: dict, result: dict) -> None:
    """PyTorch's equivalents, where it has them."""
    for field, value in _wanted(policy):
        if field == "tf32":

            def tf32(on=value):
                torch.backends.cuda.matmul.allow_tf32 = on
                torch.backends.cudnn.allow_tf32 = on

            attempt(result, field, value, tf32)
        elif field == "deterministic":
            attempt(result, field, value, lambda: torch.use_deterministic_algorithms(value))
        elif field == "intra_op_threads":
            attempt(result, field, value, lambda: torch.set_num_threads(value))
        elif field == "inter_op_threads":
            attempt(result, field, value, lambda: torch.set_num_interop_threads(value))
        else:
            skip(result, field, value, f"PyTorch has no process-wide {field} setting")


def apply_runtime_jax(jax, policy: dict, result: dict) -> None:
    """JAX's equivalents; determinism comes from XLA_FLAGS, set by the server."""
    for field, value in _wanted(policy):
        if field == "tf32":
            precision = "tensorfloat32" if value else "float32"
            attempt(
                result,
                field,
                value,
                lambda: jax.config.update("jax_default_matmul_precision", precision),
            )
        elif field == "deterministic" and value:
            result["applied"].append({"setting": field, "value": value, "via": "XLA_FLAGS"})
        else:
            skip(result, field, value, f"JAX has no process-wide {field} setting")

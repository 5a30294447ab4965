"""GPU out-of-memory errors: which errors are one, and what the explanation below them says.

TensorFlow's error is the real class (the CPU build constructs it without a GPU). PyTorch and JAX
are not installed here, so their errors are classes of the same module and name as the real ones
(``torch.cuda.OutOfMemoryError`` / ``torch.OutOfMemoryError``, ``jaxlib.xla_extension.XlaRuntimeError``,
``jax.errors.JaxRuntimeError``): recognition goes by those names, never by importing a framework.
"""

from __future__ import annotations

import html
import sys
import types

import pytest

from jupyter_tfgpu.in_kernel.magic import TFGPUMagics
from jupyter_tfgpu.in_kernel.oom import device_named, find_out_of_memory, requested_bytes
from jupyter_tfgpu.in_kernel.oom_view import duration, explain, size_option
from jupyter_tfgpu.in_kernel.policy_fields import field_named

GIB = 2**30
MIB = 2**20
TF_MESSAGE = (
    "OOM when allocating tensor with shape[1024,1024,256] and type float on "
    "/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc [Op:RandomUniform]"
)
TORCH_MESSAGE = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.15 GiB "
    "of which 18.56 GiB is free. Of the allocated memory 40.00 GiB is allocated by PyTorch."
)
JAX_MESSAGE = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes."


def error_class(module: str, name: str, base: type = RuntimeError) -> type:
    """A class whose module and name are those of a framework's error."""
    return type(name, (base,), {"__module__": module})


def raised(error: BaseException, wrap: str | None = None) -> BaseException:
    """``error`` as a cell raises it: alone, raised ``from`` it, or raised while handling it."""
    try:
        try:
            raise error
        except BaseException as inner:
            if wrap == "cause":
                raise ValueError("fit failed") from inner
            if wrap == "context":
                raise ValueError("fit failed")  # noqa: B904 - what a careless wrapper does
            if wrap == "hidden":
                raise ValueError("fit failed") from None
            raise
    except BaseException as outer:
        return outer


# -- which errors --------------------------------------------------------------------------------


@pytest.mark.tensorflow
def test_tensorflows_real_error_is_recognised():
    """tf.errors.ResourceExhaustedError on a GPU: TensorFlow, GPU 0, the tensor's size."""
    import tensorflow as tf

    # Given the real class, as TensorFlow raises it for a GPU
    error = tf.errors.ResourceExhaustedError(None, None, TF_MESSAGE)
    # When it is looked at
    oom = find_out_of_memory(raised(error))
    # Then it is TensorFlow's, on GPU 0, for a 1 GiB tensor
    assert (oom.framework, oom.device, oom.requested, oom.wrapped) == ("tensorflow", 0, GIB, False)
    assert oom.error is error and oom.label == "TensorFlow"
    # And the same class for host memory, or another TensorFlow error, is not
    cpu = TF_MESSAGE.replace("device:GPU:0", "device:CPU:0").replace("GPU_0_bfc", "cpu")
    assert find_out_of_memory(tf.errors.ResourceExhaustedError(None, None, cpu)) is None
    assert find_out_of_memory(tf.errors.InternalError(None, None, "OOM? no")) is None


@pytest.mark.parametrize("module", ["torch.cuda", "torch"])  # before and since PyTorch 2.4
def test_pytorchs_error_is_recognised_by_its_name(module):
    """OutOfMemoryError of torch / torch.cuda: PyTorch, the GPU and the size from its message."""
    error = error_class(module, "OutOfMemoryError")(TORCH_MESSAGE)
    oom = find_out_of_memory(raised(error))
    assert (oom.framework, oom.device, oom.requested) == ("torch", 0, 20 * GIB)


def test_an_old_pytorchs_runtime_error_counts_only_once_torch_is_imported(monkeypatch):
    """PyTorch before 1.13 raised RuntimeError("CUDA out of memory..."): PyTorch's only if the
    process imported torch (nothing is imported to find out)."""
    old = RuntimeError(TORCH_MESSAGE.replace("GPU 0 has a total capacity of", "(GPU 1;"))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert find_out_of_memory(old) is None
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert find_out_of_memory(old).device == 1


@pytest.mark.parametrize(
    "module,name",
    [("jaxlib.xla_extension", "XlaRuntimeError"), ("jax.errors", "JaxRuntimeError")],
)
def test_jaxs_error_counts_only_when_resource_exhausted(module, name):
    """Every XLA failure has JAX's class; only RESOURCE_EXHAUSTED is memory."""
    cls = error_class(module, name)
    oom = find_out_of_memory(cls(JAX_MESSAGE))
    assert (oom.framework, oom.device, oom.requested) == ("jax", None, 16 * GIB)
    assert find_out_of_memory(cls("INTERNAL: Failed to launch CUDA kernel")) is None


@pytest.mark.parametrize("wrap,found", [("cause", True), ("context", True), ("hidden", False)])
def test_an_error_raised_from_an_out_of_memory_error(wrap, found):
    """A library's own error raised from (or while handling) an OOM is explained; one that hides
    it (``from None``), as the traceback does, is not."""
    torch_oom = error_class("torch.cuda", "OutOfMemoryError")(TORCH_MESSAGE)
    oom = find_out_of_memory(raised(torch_oom, wrap))
    assert (oom is not None) is found
    if found:
        assert oom.wrapped and oom.error is torch_oom


@pytest.mark.parametrize(
    "error",
    [
        ValueError("shapes do not match"),
        MemoryError(),  # host memory
        RuntimeError("CUDA out of memory"),  # no torch imported in this process
        error_class("mylib", "OutOfMemoryError")("GPU 0"),  # not PyTorch's
        error_class("jaxlib.xla_extension", "XlaRuntimeError")(
            "INVALID_ARGUMENT: RESOURCE_EXHAUSTED"
        ),
    ],
)
def test_other_errors_are_not_out_of_memory(error, monkeypatch):
    """Anything else is left alone."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert find_out_of_memory(raised(error)) is None


def test_a_cycle_in_the_chain_ends():
    """Errors that are each other's context do not loop."""
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert find_out_of_memory(a) is None


@pytest.mark.parametrize(
    "message,device,asked",
    [
        (TF_MESSAGE.replace("GPU:0", "GPU:1"), 1, GIB),
        ("OOM when allocating tensor with shape[2,3] and type double on GPU_3_bfc", 3, 48),
        ("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 2; 15.78 GiB total", 2, 512 * MIB),
        ("RESOURCE_EXHAUSTED: Failed to allocate request for 4.00GiB (4294967296B) on device "
         "ordinal 1", 1, 4 * GIB),
        ("RESOURCE_EXHAUSTED: out of memory on cuda:2", 2, None),
        ("something else", None, None),
    ],
)  # fmt: skip
def test_what_the_messages_say(message, device, asked):
    """The GPU (as the process numbers it) and the size asked for, per framework's wording."""
    assert device_named(message) == device
    assert requested_bytes(message) == asked


# -- the explanation -------------------------------------------------------------------------------


def process(pid, gib, mine=False, kernel=True, idle=None):
    """A kernel/status process row."""
    return {
        "pid": pid,
        "used_memory": int(gib * GIB),
        "kernel_id": "k-self" if mine else None,
        "notebook": "team/<nb>.ipynb" if mine else None,
        "attributed_by": "pid" if kernel else None,
        "mine": mine,
        "idle_seconds": idle,
    }


def gpu(index, used_gib, processes=(), total_gib=80, uuid=None, mig=None):
    """A kernel/status GPU row."""
    used = int(used_gib * GIB)
    return {
        "index": index,
        "uuid": uuid or f"GPU-{index}aaa-{index}",
        "name": "NVIDIA A100 80GB",
        "memory": {"total": total_gib * GIB, "used": used, "free": total_gib * GIB - used},
        "utilization": {"gpu": 90, "memory": 40},
        "mig": mig,
        "processes": list(processes),
    }


def status(gpus, policy=None, applied=None, reaping=None, sources=None, notebook="team/<nb>.ipynb"):
    """A kernel/status answer."""
    mine = [
        {
            "index": g["index"],
            "used_memory": sum(p["used_memory"] for p in g["processes"] if p["mine"]),
        }
        for g in gpus
    ]
    return {
        "available": True,
        "simulated": False,
        "gpus": gpus,
        "kernel": {
            "notebook": notebook,
            "policy": {**(policy or {}), "sources": sources or {}},
            "applied": applied or {},
            "restart_required": False,
            "gpu_memory": {"per_gpu": mine},
        },
        "idle_reaping": reaping,
    }


def oom(framework="tensorflow", message=TF_MESSAGE):
    """An out-of-memory error of one framework, as found in a cell's error."""
    classes = {
        "tensorflow": ("tensorflow.python.framework.errors_impl", "ResourceExhaustedError"),
        "torch": ("torch.cuda", "OutOfMemoryError"),
        "jax": ("jaxlib.xla_extension", "XlaRuntimeError"),
    }
    return find_out_of_memory(error_class(*classes[framework])(message))


SHARED = [
    gpu(0, 79, [process(11, 60, idle=5400.0), process(12, 18, mine=True), process(13, 0.5, kernel=False)]),
    gpu(1, 10, [process(14, 9.5, idle=30.0)]),
]  # fmt: skip


def magic_lines(view) -> list[str]:
    """The %tfgpu lines the view suggests."""
    return [action.line for action in view.actions]


def test_the_explanation_names_the_gpu_its_holders_and_the_lines_that_help():
    """GPU 0 full: who holds what and for how long idle, the policy, three lines, the reaping."""
    # Given GPU 0 nearly full (another kernel idle 90 min on 60 GiB) and GPU 1 with room
    reaping = {"timeout": 7200, "min_memory_mb": 256, "action": "restart"}
    facts = status(SHARED, reaping=reaping)
    # When TensorFlow's OOM on GPU 0 is explained
    view = explain(oom(), facts)
    text = view.text()
    # Then it says which GPU and how full, then who holds it, largest first, with idle times
    assert text.startswith(
        "jupyter-tfgpu: TensorFlow ran out of GPU memory on GPU 0 (NVIDIA A100 80GB): "
        "79.0 GiB of 80.0 GiB in use, 1.0 GiB free; the allocation asked for 1.0 GiB."
    )
    holders = text.split("\n")[2:5]
    words = [" ".join(line.split()) for line in holders]
    assert words[0] == "60.0 GiB 11 another notebook's kernel on this server idle 1 h 30 min"
    assert words[1] == "18.0 GiB 12 this kernel (team/<nb>.ipynb) busy"
    assert words[2] == "512.0 MiB 13 a process outside this server"
    # And the policy this kernel runs with
    assert (
        "This kernel runs with: memory growth not set, memory limit not set, visible GPUs not set."
        in text
    )
    # And the lines, each a valid %tfgpu line, that a restart brings into effect
    assert magic_lines(view) == [
        "%tfgpu policy --growth",
        "%tfgpu policy --limit 19GiB",
        "%tfgpu policy --devices auto",
    ]
    assert "takes effect after a restart: Kernel > Restart Kernel" in text
    assert "GPU 1 has the most free memory now: 70.0 GiB" in text
    # And when the idle holder's memory comes back
    assert (
        "The server restarts kernels idle for 2 h that hold at least 256.0 MiB of GPU memory; the "
        "idle memory here comes back from PID 11 (60.0 GiB) in about 30 min, unless its kernel "
        "runs a cell first."
    ) in text


def test_every_suggested_line_is_one_the_magic_takes():
    """The lines parse with %tfgpu's own parser, and each value with its field."""
    for line in magic_lines(explain(oom(), status(SHARED))):
        args = TFGPUMagics.tfgpu.parser.parse_argstring(line.removeprefix("%tfgpu"))
        assert args.command == "policy"
        if args.memory_limit_mb:
            assert field_named("limit").parse(args.memory_limit_mb) == 19 * 1024
        if args.devices:
            assert field_named("devices").parse(args.devices) == "auto"


def test_the_html_is_compact_and_escaped():
    """A bar, a table, the lines as code; the notebook's name escaped."""
    page = explain(oom(), status(SHARED)).html()
    assert "<table>" in page and "<code>%tfgpu policy --growth</code>" in page
    assert "team/<nb>.ipynb" not in page and html.escape("team/<nb>.ipynb") in page
    assert html.unescape(page).count("another notebook's kernel on this server") == 1


def test_only_what_would_change_anything_is_suggested():
    """Growth already on, a limit from the admin's cap, no emptier GPU: nothing to suggest."""
    # Given a kernel with growth on and the admin's cap as its limit, on the emptiest GPU
    facts = status(
        [gpu(0, 79, [process(12, 18, mine=True)]), gpu(1, 79.5)],
        policy={"memory_growth": True, "memory_limit_mb": 8192},
        applied={"memory_growth": True, "memory_limit_mb": 8192},
        sources={"memory_growth": "notebook", "memory_limit_mb": "cap"},
    )
    view = explain(oom(), facts)
    # Then no line is offered, and the policy says what it runs with
    assert view.actions == []
    assert "memory growth on, memory limit 8 GiB" in view.text()
    # And a limit the notebook set itself, under what the GPU has room for, may be raised
    facts["kernel"]["policy"]["sources"]["memory_limit_mb"] = "notebook"
    assert magic_lines(explain(oom(), facts)) == ["%tfgpu policy --limit 19GiB"]


def test_a_saved_policy_waiting_for_a_restart_is_not_offered_again():
    """Growth saved but not running yet: the restart is what is missing, not the line."""
    facts = status(SHARED, policy={"memory_growth": True, "devices": "auto"})
    facts["kernel"]["restart_required"] = True
    view = explain(oom(), facts)
    assert "%tfgpu policy --growth" not in magic_lines(view)
    assert "Its notebook's policy has changed since: restart the kernel" in view.text()
    assert "already set: a restart picks again" in view.text()


def test_pytorch_gets_no_growth_line_and_jax_gets_its_own_reason():
    """Memory growth changes TensorFlow and JAX, not PyTorch (which allocates as it goes)."""
    torch_view = explain(oom("torch", TORCH_MESSAGE), status(SHARED))
    assert "%tfgpu policy --growth" not in magic_lines(torch_view)
    assert "PyTorch ran out of GPU memory on GPU 0" in torch_view.text()
    jax_view = explain(oom("jax", JAX_MESSAGE), status(SHARED))
    assert "instead of preallocating 75% of the GPU" in jax_view.text()
    # JAX's message names no GPU: the one this kernel holds memory on
    assert "on GPU 0 (NVIDIA A100 80GB)" in jax_view.text()


def test_an_allocation_larger_than_the_gpu_is_said_so():
    """No policy makes 100 GiB fit on an 80 GiB GPU: said, and no limit is offered."""
    view = explain(oom("torch", TORCH_MESSAGE.replace("20.00 GiB", "100.00 GiB")), status(SHARED))
    assert "The allocation alone is larger than GPU 0 (80.0 GiB)" in view.text()
    assert magic_lines(view) == ["%tfgpu policy --devices auto"]


def test_the_gpu_named_is_mapped_through_cuda_visible_devices():
    """GPU 0 of a kernel that sees only the server's GPU 1 (by UUID, or a MIG slice) is GPU 1."""
    second = SHARED[1]["uuid"]
    assert "on GPU 1 (" in explain(oom(), status(SHARED), visible=second).text()
    assert "on GPU 1 (" in explain(oom(), status(SHARED), visible=second[:8]).text()  # a prefix
    mig = {"enabled": True, "instances": [{"index": 0, "uuid": "MIG-abc"}]}
    facts = status([gpu(0, 1), gpu(1, 79, mig=mig)])
    assert "on GPU 1 (" in explain(oom(), facts, visible="MIG-abc").text()
    # And a GPU the kernel does not see is said so, not guessed
    hidden = explain(oom(), status(SHARED), visible="-1").text()
    assert "on GPU 0 as this kernel numbers them" in hidden
    assert "This kernel sees no GPU 0 among the server's GPUs." in hidden


def test_an_error_that_names_no_gpu_points_at_the_fullest_this_kernel_uses():
    """JAX on two GPUs of this kernel: the fuller one, and a remark that it was a guess."""
    facts = status(
        [gpu(0, 40, [process(12, 30, mine=True)]), gpu(1, 78, [process(12, 70, mine=True)])]
    )
    text = explain(oom("jax", JAX_MESSAGE), facts).text()
    assert "on GPU 1 (" in text
    assert "The error names no GPU; GPU 1 is the fullest this kernel uses." in text


def test_without_the_server_it_says_so_and_still_helps():
    """The server did not answer: the error, why there is nothing more, and the growth line."""
    view = explain(oom(), None, "the jupyter-tfgpu server did not answer within 2 s")
    text = view.text()
    assert text.startswith(
        "jupyter-tfgpu: TensorFlow ran out of GPU memory on GPU 0 as this kernel numbers them; "
        "the allocation asked for 1.0 GiB."
    )
    assert "not known here (the jupyter-tfgpu server did not answer within 2 s)" in text
    assert "%tfgpu kernels shows it once the server answers." in text
    assert magic_lines(view) == ["%tfgpu policy --growth"]


def test_a_kernel_the_server_did_not_start_gets_no_policy_lines():
    """Outside a jupyter-tfgpu server: this machine's GPUs (NVML), and no %tfgpu policy line."""
    local = {"available": True, "local": True, "kernel": None, "gpus": [gpu(0, 79, [
        process(12, 18, mine=True), process(99, 60, kernel=False)])]}  # fmt: skip
    view = explain(oom(), local)
    assert view.actions == []
    assert "a process outside this server" not in view.text()
    assert "another process" in view.text()
    assert "GPU policies need the jupyter-tfgpu server" in view.text()


@pytest.mark.parametrize("action,said", [("warn", "warns about"), ("interrupt", "interrupts")])
def test_idle_reaping_that_frees_nothing_says_so(action, said):
    """Warn and interrupt free no memory: no promise of it coming back."""
    reaping = {"timeout": 600, "min_memory_mb": 256, "action": action}
    text = explain(oom(), status(SHARED, reaping=reaping)).text()
    assert f"The server {said} kernels idle for 10 min" in text
    assert text.rstrip().endswith("which frees none of it.")


def test_an_idle_holder_past_the_timeout_is_due_any_moment():
    """Idle longer than the timeout (the enforcer's next pass): at any moment; each idle holder
    over the minimum is listed."""
    reaping = {"timeout": 3600, "min_memory_mb": 256, "action": "shutdown"}
    text = explain(oom(), status(SHARED, reaping=reaping)).text()
    assert "The server shuts down kernels idle for 1 h" in text
    assert "PID 11 (60.0 GiB) at any moment, unless its kernel runs a cell first." in text
    # And two idle holders, one of them under the minimum
    crowded = [gpu(0, 79, [*SHARED[0]["processes"], process(15, 2, idle=600.0),
                           process(16, 0.1, idle=9000.0)])]  # fmt: skip
    text = explain(oom(), status(crowded, reaping=reaping)).text()
    assert (
        "comes back from PID 11 (60.0 GiB) at any moment and PID 15 (2.0 GiB) in about 50 min, "
        "unless their kernels run a cell first."
    ) in text
    assert "PID 16 (" not in text


@pytest.mark.parametrize(
    "seconds,said",
    [(45, "45 s"), (720, "12 min"), (7500, "2 h 5 min"), (3600, "1 h"), (273600, "3 d 4 h")],
)
def test_durations_read_plainly(seconds, said):
    """Idle times and timeouts as people say them."""
    assert duration(seconds) == said


def test_limits_are_written_as_the_magic_takes_them():
    """Rounded down to whole GiB, or MiB under 1 GiB."""
    assert size_option(19 * GIB + 5) == "19GiB"
    assert size_option(768 * MIB) == "768MiB"

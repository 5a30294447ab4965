"""The hook in a real IPython shell: errors are shown exactly as IPython shows them, and a GPU
out-of-memory error gets its explanation below, within a time bound, or a switch turns it off."""

from __future__ import annotations

import re
import threading

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from jupyter_tfgpu.in_kernel import oom_hook
from jupyter_tfgpu.in_kernel.client import NotConfigured, Unreachable
from jupyter_tfgpu.in_kernel.magic import load_ipython_extension
from tests.in_kernel.test_oom import SHARED, TF_MESSAGE, status

TF_CELL = f"""
import tensorflow as tf
raise tf.errors.ResourceExhaustedError(None, None, {TF_MESSAGE!r})
"""
TORCH_CELL = """
class OutOfMemoryError(RuntimeError):
    pass
OutOfMemoryError.__module__ = "torch.cuda"
raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity")
"""
JAX_CELL = """
class XlaRuntimeError(RuntimeError):
    pass
XlaRuntimeError.__module__ = "jaxlib.xla_extension"
raise XlaRuntimeError("INTERNAL: Failed to launch CUDA kernel")
"""
EXPLAINED = "jupyter-tfgpu: TensorFlow ran out of GPU memory on GPU 0 (NVIDIA A100 80GB)"


@pytest.fixture
def shell(monkeypatch):
    """A fresh IPython shell, without colours or history."""
    monkeypatch.delenv(oom_hook.SWITCH_ENV, raising=False)
    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    InteractiveShell.clear_instance()
    instance = InteractiveShell.instance(config=config)
    yield instance
    InteractiveShell.clear_instance()


def run(shell, capsys, cell):
    """Run a cell; what it printed (stdout and stderr) and its result."""
    result = shell.run_cell(cell, store_history=False)
    out = capsys.readouterr()
    return out.out + out.err, result


def same_cell_names(text: str) -> str:
    """Tracebacks name a cell by its compile-time name; two runs of one cell differ only there."""
    return re.sub(r"ipykernel_\d+/\d+\.py|In\[\d+\]|<ipython-input-\d+-\w+>", "<cell>", text)


class Facts:
    """The server's answer, counted."""

    def __init__(self, answer=None, error=None):
        self.answer, self.error, self.calls = answer, error, 0

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.answer, None


@pytest.mark.parametrize(
    "cell",
    [
        "raise ValueError('shapes do not match')",  # an error of the cell's code
        "x y",  # a cell that does not parse: IPython's syntax-error display
        "exec('x y')",  # a SyntaxError raised while running: a full traceback
        "import json\njson.loads('{')",  # an error from inside a library
        JAX_CELL,  # JAX's class, for an error that is not memory
    ],
)
def test_any_other_error_is_shown_exactly_as_before(shell, capsys, cell):
    """Same output and same result (the cell failed with its own error), nothing added."""
    # Given what IPython shows without the hook
    before, plain = run(shell, capsys, cell)
    assert "Error" in before
    facts = Facts(status(SHARED))
    # When the hook is installed and the cell runs again
    assert oom_hook.install(shell, read=facts)
    after, hooked = run(shell, capsys, cell)
    # Then the output is the same, the result too, and the server was not asked
    assert same_cell_names(after) == same_cell_names(before)
    assert not hooked.success
    failed = [r.error_before_exec or r.error_in_exec for r in (plain, hooked)]
    assert [(type(e).__module__, type(e).__name__, str(e)) for e in failed] == [
        (type(failed[0]).__module__, type(failed[0]).__name__, str(failed[0]))
    ] * 2
    assert facts.calls == 0


@pytest.mark.tensorflow
def test_an_out_of_memory_error_is_shown_then_explained(shell, capsys):
    """TensorFlow's real error: IPython's traceback unchanged, then the explanation."""
    # Given the traceback IPython shows without the hook
    before, _ = run(shell, capsys, TF_CELL)
    assert "ResourceExhaustedError" in before
    facts = Facts(status(SHARED))
    oom_hook.install(shell, read=facts)
    # When the cell runs again
    after, result = run(shell, capsys, TF_CELL)
    # Then the traceback comes first, unchanged, and the explanation after it
    traceback, _, explanation = same_cell_names(after).partition(EXPLAINED)
    assert traceback == same_cell_names(before)
    assert "%tfgpu policy --growth" in explanation
    # And the cell failed with TensorFlow's error, the server asked once
    assert type(result.error_in_exec).__name__ == "ResourceExhaustedError"
    assert not result.success and facts.calls == 1


def test_a_wrapped_out_of_memory_error_is_explained(shell, capsys):
    """A library's error raised from PyTorch's OOM: explained, naming both."""
    oom_hook.install(shell, read=Facts(status(SHARED)))
    cell = f"try:\n{TORCH_CELL.replace(chr(10), chr(10) + '    ')}\nexcept Exception as e:\n"
    cell += "    raise ValueError('the training step failed') from e"
    out, result = run(shell, capsys, cell)
    assert "ValueError: the training step failed" in out
    assert "PyTorch ran out of GPU memory on GPU 0" in out
    assert "The error above was raised from PyTorch's OutOfMemoryError." in out
    assert isinstance(result.error_in_exec, ValueError)


def test_the_switch_turns_the_explanation_off(shell, capsys, monkeypatch):
    """TFGPU_OOM_EXPLAIN=0: at start nothing is installed; in a running kernel nothing is added."""
    monkeypatch.setenv(oom_hook.SWITCH_ENV, "0")
    assert not oom_hook.install(shell)
    assert shell.custom_exceptions == ()
    monkeypatch.setenv(oom_hook.SWITCH_ENV, "1")
    facts = Facts(status(SHARED))
    oom_hook.install(shell, read=facts)
    monkeypatch.setenv(oom_hook.SWITCH_ENV, "off")
    out, _ = run(shell, capsys, TORCH_CELL)
    assert "OutOfMemoryError: CUDA out of memory" in out
    assert "jupyter-tfgpu" not in out and facts.calls == 0


def test_an_explanation_that_fails_never_hides_the_error(shell, capsys):
    """Facts that cannot be read, or a bug: the error shown, one line said, the hook kept."""
    oom_hook.install(shell, read=Facts(error=KeyError("boom")))
    out, result = run(shell, capsys, TORCH_CELL)
    assert "OutOfMemoryError: CUDA out of memory" in out
    assert "jupyter-tfgpu: could not explain the out-of-memory error (KeyError: 'boom')" in out
    assert shell.custom_exceptions == (Exception,)  # IPython did not unregister it
    assert not result.success


def test_installed_once_and_a_handler_set_before_keeps_its_errors(shell, capsys):
    """Another extension's handler still gets its own errors; installing twice changes nothing."""
    # Given a handler another extension set for KeyError
    shell.set_custom_exc(
        (KeyError,), lambda self, etype, value, tb, tb_offset=None: print("theirs")
    )
    # When the magic is loaded (twice: by the server's kernel start and by %load_ext)
    load_ipython_extension(shell)
    load_ipython_extension(shell)
    # Then KeyError goes to their handler, and other errors are shown as IPython does
    assert run(shell, capsys, "{}['x']")[0].strip() == "theirs"
    assert "ValueError: no" in run(shell, capsys, "raise ValueError('no')")[0]
    assert shell.custom_exceptions == (Exception,)


# -- the server's facts, within a time bound -----------------------------------------------------


def test_the_servers_answer_is_used():
    """kernel/status as the server answered it."""
    answer = status(SHARED)
    assert oom_hook.read_facts(fetch=lambda: answer) == (answer, None)


class Failing:
    """A fetch that raises."""

    def __init__(self, error):
        self.error = error

    def __call__(self):
        raise self.error


def test_a_server_that_is_down_gives_this_machines_gpus_and_why():
    """Unreachable: NVML's view (here: no NVML) and the client's sentence."""
    down = Unreachable("the jupyter-tfgpu server at http://127.0.0.1:9/ is not reachable")
    found, note = oom_hook.read_facts(fetch=Failing(down))
    assert found["local"] and found["gpus"] == []
    assert note == "the jupyter-tfgpu server at http://127.0.0.1:9/ is not reachable."


def test_a_kernel_without_a_server_reads_nvml():
    """NotConfigured: NVML's view, with no complaint (the explanation says policies need one)."""
    found, note = oom_hook.read_facts(fetch=Failing(NotConfigured("no server")))
    assert found["local"] and note is None


def test_a_server_that_does_not_answer_does_not_hold_the_cell():
    """A request that never returns: given up at the time bound (0 here: no waiting)."""
    release = threading.Event()
    try:
        found, note = oom_hook.read_facts(timeout=0, fetch=lambda: release.wait())
        assert found is None
        assert note == "the jupyter-tfgpu server did not answer within 0 s"
    finally:
        release.set()


@pytest.mark.parametrize("value,on", [(None, True), ("1", True), ("0", False), ("False", False),
                                      ("off", False), ("no", False), ("", True)])  # fmt: skip
def test_the_switch_reads_the_usual_words(value, on):
    """Unset or anything but 0/false/no/off: on."""
    env = {} if value is None else {oom_hook.SWITCH_ENV: value}
    assert oom_hook.enabled(env) is on


def test_no_shell_no_hook():
    """Outside IPython (a script, a plain Python) there is nothing to install."""
    assert oom_hook.install(object()) is False

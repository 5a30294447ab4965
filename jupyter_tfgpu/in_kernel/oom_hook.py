"""Below the traceback of a GPU out-of-memory error, say why and what would help.

Installed with the ``%tfgpu`` magic (so in every kernel the server starts, and with
``%load_ext jupyter_tfgpu``), once per IPython shell, through IPython's ``set_custom_exc``.
The handler first shows the error exactly as IPython would (``showtraceback``, or the
syntax-error display for a cell that did not parse); the cell still fails with the framework's
own error (``execute_reply`` status ``error``, its ``ename`` and ``evalue``). Only then, for an
out-of-memory error of TensorFlow, PyTorch or JAX (see ``oom``), it asks the server for the
GPUs, within ``FACTS_TIMEOUT`` seconds, and displays the explanation (``oom_view``). Any other
error gets nothing more. ``TFGPU_OOM_EXPLAIN=0`` in the kernel's environment (the server's,
or ``%env`` in a running kernel) turns the explanation off.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from jupyter_tfgpu.in_kernel import inprocess
from jupyter_tfgpu.in_kernel.client import NotConfigured, ServerClient, ServerError
from jupyter_tfgpu.in_kernel.local import local_status
from jupyter_tfgpu.in_kernel.oom import find_out_of_memory
from jupyter_tfgpu.in_kernel.oom_view import OutOfMemoryView, explain

SWITCH_ENV = "TFGPU_OOM_EXPLAIN"
OFF_WORDS = ("0", "false", "no", "off")
# The failing cell waits at most this long for the server's facts, then explains without them.
FACTS_TIMEOUT = 2.0
# What IPython shows, rather than a traceback, for a cell that did not parse (run_cell_async).
_PARSE_ERRORS = (OverflowError, SyntaxError, ValueError, TypeError, MemoryError)

Facts = tuple[dict[str, Any] | None, str | None]
_installed: weakref.WeakSet = weakref.WeakSet()


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether out-of-memory errors are explained (``TFGPU_OOM_EXPLAIN`` not 0/false/no/off)."""
    env = os.environ if environ is None else environ
    return str(env.get(SWITCH_ENV, "")).strip().lower() not in OFF_WORDS


def server_status(timeout: float) -> dict[str, Any]:
    """The server's ``kernel/status`` for this kernel (NotConfigured outside a server's kernel)."""
    client = ServerClient.from_env()
    client.timeout = timeout
    return client.status()


def _facts(fetch: Callable[[], dict[str, Any]]) -> Facts:
    try:
        return fetch(), None
    except NotConfigured:
        return local_status(), None
    except ServerError as err:
        return local_status(), f"{err}."


def read_facts(
    timeout: float = FACTS_TIMEOUT, fetch: Callable[[], dict[str, Any]] | None = None
) -> Facts:
    """``(status, note)`` within ``timeout`` seconds: the server's ``kernel/status``, else this
    machine's GPUs through NVML and why not the server's, else nothing and why."""
    fetch = fetch or (lambda: server_status(timeout))
    box: dict[str, Facts] = {}

    def work() -> None:
        try:
            box["facts"] = _facts(fetch)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the explanation goes on
            box["facts"] = None, f"the GPUs could not be read ({type(exc).__name__})"

    # In a thread: a server that accepts and never answers must not hold the failing cell.
    thread = threading.Thread(target=work, name="tfgpu-oom-facts", daemon=True)
    thread.start()
    thread.join(timeout)
    if "facts" not in box:
        return None, f"the jupyter-tfgpu server did not answer within {timeout:g} s"
    return box["facts"]


class OutOfMemoryHandler:
    """IPython's custom exception handler: the error as IPython shows it, then, for a GPU
    out-of-memory error, the explanation."""

    def __init__(
        self,
        previous: tuple[tuple[type, ...], Callable[..., Any]] | None = None,
        read: Callable[[], Facts] = read_facts,
    ) -> None:
        self.previous = previous  # a handler another extension set before this one
        self.read = read

    def __call__(
        self, shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None
    ) -> None:
        """Show the error unchanged, then explain it if it is a GPU out-of-memory error."""
        self.show_error(shell, etype, value, tb, tb_offset)
        try:
            view = self.explanation(value)
            if view is not None:
                from IPython.display import display

                display(view)
        except Exception as exc:  # noqa: BLE001 - the error is shown; this part must never fail
            sys.stderr.write(
                f"jupyter-tfgpu: could not explain the out-of-memory error ({type(exc).__name__}: "
                f"{exc})\n"
            )

    def show_error(
        self, shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any
    ) -> None:
        """What IPython itself does with this error when no handler is set."""
        if self.previous is not None and isinstance(value, self.previous[0]):
            self.previous[1](etype, value, tb, tb_offset=tb_offset)
        elif tb is not None and tb.tb_frame.f_code.co_name == "run_cell_async":
            # IPython calls the handler from two places; this one is the cell's parsing.
            if isinstance(value, IndentationError):
                shell.showindentationerror()
            elif isinstance(value, _PARSE_ERRORS):
                shell.showsyntaxerror()
            else:
                shell.showtraceback()
        else:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)

    def explanation(self, value: BaseException) -> OutOfMemoryView | None:
        """The view for a GPU out-of-memory error; None for any other error or when switched off."""
        if not enabled():
            return None
        oom = find_out_of_memory(value)
        if oom is None:
            return None
        status, note = self.read()
        return explain(
            oom,
            status,
            note,
            visible=os.environ.get(inprocess.VISIBLE_ENV),
            running=inprocess.running_policy(),
        )


def install(shell: Any, read: Callable[[], Facts] = read_facts) -> bool:
    """Set the handler on an IPython shell, once; keeps a handler set before it for its errors.
    Returns whether it was set (not when switched off, already set, or not an IPython shell)."""
    if not enabled() or not hasattr(shell, "set_custom_exc") or shell in _installed:
        return False
    kinds = tuple(getattr(shell, "custom_exceptions", ()) or ())
    previous = (kinds, shell.CustomTB) if kinds else None
    # Every Exception: an out-of-memory error may come wrapped in any class (KeyboardInterrupt
    # and SystemExit are BaseExceptions, which IPython handles itself before this).
    shell.set_custom_exc((Exception,), OutOfMemoryHandler(previous, read))
    _installed.add(shell)
    return True

"""The ``%tfgpu`` line magic: the GPUs and this notebook's GPU policy, from inside the notebook.

Kernels the server starts load it on their own (the provisioner adds the extension to the
ipykernel command line); elsewhere ``%load_ext jupyter_tfgpu``. The policy options are made from
the policy JSON Schema (see ``policy_fields``), so ``%tfgpu --help`` always lists every field.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import (
    MagicHelpFormatter,
    argument,
    argument_group,
    kwds,
    magic_arguments,
    parse_argstring,
)

from jupyter_tfgpu.in_kernel import inprocess, oom_hook
from jupyter_tfgpu.in_kernel.client import NotConfigured, Refused, ServerClient, ServerError, TokenRefused
from jupyter_tfgpu.in_kernel.local import local_status
from jupyter_tfgpu.in_kernel.notices import launch_of
from jupyter_tfgpu.in_kernel.policy_fields import PolicyField, field_named, policy_fields, same_policy, setting_text
from jupyter_tfgpu.in_kernel.views import KernelsView, MessageView, PolicyChangeView, StatusView

COMMANDS = ("status", "policy", "watch", "kernels")
NEEDS_SERVER = "policies need the jupyter-tfgpu server"
USAGE = """Show the GPUs and this notebook's GPU policy, or change the policy.

  %tfgpu                      the GPUs, this kernel's share, the notebook's policy, what this
                              kernel runs with, and whether it needs a restart
  %tfgpu policy               the policy; applies it in this kernel if it still can
  %tfgpu policy --growth --limit 4GiB --devices 0,1 --allocator async
                              change fields of this notebook's policy (the others are kept)
  %tfgpu policy --devices cpu
                              hide every GPU from this kernel
  %tfgpu policy --limit none  remove one field (or --unset limit,growth)
  %tfgpu policy --reset       remove this notebook's policy
  %tfgpu watch                a live panel (needs ipywidgets)
  %tfgpu kernels              who holds memory on each GPU

A saved policy takes effect in this kernel at once when no framework has initialized the GPU yet
(TensorFlow: no op has run); otherwise the answer says that the kernel needs a restart. Sizes take
binary units: 4GiB = 4G = 4096 (a bare number is MiB). Admin caps and bad values are refused with
the server's message. In a kernel the server did not start, %tfgpu shows this machine's GPUs
through NVML; policies need the server.
"""


def _help(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help strings with %


class _HelpFormatter(MagicHelpFormatter):
    """IPython's magic help, with a plain usage line: its own starts with ``::``, for Sphinx."""

    def add_usage(self, usage, actions, groups, prefix="usage: %"):
        """``usage: %tfgpu [-h] ...`` rather than an RST literal block."""
        super().add_usage(usage, actions, groups, prefix)


def _policy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One ``@argument`` per field of the policy schema, in the schema's order."""
    decorators: list[Any] = []
    for field in policy_fields():
        if field.kind == "bool":
            decorators.append(
                argument(
                    f"--{field.option}",
                    dest=field.name,
                    action="store_const",
                    const=True,
                    help=_help(f"{field.title}: on. {field.description}"),
                )
            )
            decorators.append(
                argument(
                    f"--no-{field.option}",
                    dest=field.name,
                    action="store_const",
                    const=False,
                    help=_help(f"{field.title}: off."),
                )
            )
        else:
            decorators.append(
                argument(
                    f"--{field.option}",
                    dest=field.name,
                    metavar=_metavar(field),
                    help=_help(f"{field.title}. {field.description}{_words(field)}"),
                )
            )
    for decorator in reversed(decorators):  # magic_arguments lists them in reverse
        func = decorator(func)
    return func


def _metavar(field: PolicyField) -> str:
    if field.kind == "enum":
        return "{" + ",".join(map(str, field.choices)) + "}"
    return {"mib": "SIZE", "int": "N", "number": "X", "list": "A,B"}.get(field.kind, "VALUE")


def _words(field: PolicyField) -> str:
    words = [w for w in field.aliases if w not in map(str, field.choices)]
    shown = f" Also: {', '.join(words)}." if words else ""
    return shown + " 'none' removes it."


@magics_class
class TFGPUMagics(Magics):
    """``%tfgpu``."""

    @line_magic
    @magic_arguments()
    @kwds(description=USAGE, formatter_class=_HelpFormatter)
    @argument(
        "command",
        nargs="?",
        default="status",
        choices=COMMANDS,
        help="status (the default), policy, watch or kernels",
    )
    @argument("-h", "--help", action="store_true", help="show this help")
    @argument("--reset", action="store_true", help="policy: remove this notebook's policy")
    @argument("--unset", metavar="FIELD[,FIELD]", help="policy: remove these fields")
    @argument("--interval", type=float, default=1.0, help="watch: seconds between updates")
    @argument_group("policy fields", "Options of %tfgpu policy, one per field of the policy.")
    @_policy_options
    def tfgpu(self, line: str = "") -> Any:
        """Show the GPUs and this notebook's GPU policy, or change the policy."""
        args = parse_argstring(self.tfgpu, line)
        if args.help:
            print(self.tfgpu.parser.format_help())
            return None
        changes = self._changes(args)
        if args.command != "policy" and (changes or args.reset):
            raise UsageError("policy options go with %tfgpu policy, e.g. %tfgpu policy --growth")
        if args.command == "policy":
            return self._policy(changes, args.reset)
        if args.command == "watch":
            return self._watch(args.interval)
        status, notes = self._status()
        if args.command == "kernels":
            return KernelsView(status, notes)
        return self._status_view(status, notes)

    # -- reading -------------------------------------------------------------------------------

    def _status(self) -> tuple[dict[str, Any], list[str]]:
        """The server's ``kernel/status``, or this machine's GPUs and why not the server's."""
        try:
            return ServerClient.from_env().status(), []
        except NotConfigured:
            return local_status(), [
                f"This kernel was not started by a jupyter-tfgpu server; {NEEDS_SERVER}."
            ]
        except ServerError as err:
            return local_status(), [f"{err}."]

    def _status_view(self, status: dict[str, Any], notes: list[str]) -> StatusView:
        kernel = status.get("kernel")
        running = inprocess.running_policy()
        restart = inprocess.restart_required(kernel) if kernel else None
        launch = launch_of(kernel)
        if launch.get("applied_in_process") or (
            running and launch and not same_policy(running, launch)
        ):
            notes.append("This kernel's policy was changed in-process, without a restart.")
        notes.extend(_framework_lines())
        return StatusView(status, running=running, restart_required=restart, notes=notes)

    # -- changing the policy ------------------------------------------------------------------

    def _changes(self, args: Any) -> dict[str, Any]:
        """The fields the options set (``None``: remove the field)."""
        changes: dict[str, Any] = {}
        for field in policy_fields():
            raw = getattr(args, field.name, None)
            if raw is None:
                continue
            try:
                changes[field.name] = raw if isinstance(raw, bool) else field.parse(raw)
            except ValueError as err:
                raise UsageError(str(err)) from None
        for name in (args.unset or "").split(","):
            if name.strip():
                try:
                    changes[field_named(name.strip()).name] = None
                except KeyError:
                    known = ", ".join(f.option for f in policy_fields())
                    raise UsageError(
                        f"--unset: no policy field {name.strip()!r} (fields: {known})"
                    ) from None
        return changes

    def _policy(self, changes: dict[str, Any], reset: bool) -> PolicyChangeView:
        if reset and changes:
            raise UsageError("--reset removes the whole policy: give it on its own")
        try:
            client = ServerClient.from_env()
            if reset:
                view = client.reset_policy()
                said = f"Removed the policy of {view.get('notebook')}."
            elif changes:
                own = _own_policy(client.policy())
                own.update(changes)
                view = client.set_policy({k: v for k, v in own.items() if v is not None})
                said = f"Saved the policy of {view.get('notebook')}."
            else:
                view = client.policy()
                said = f"The policy of {view.get('notebook') or 'this kernel'}:"
        except NotConfigured:
            raise UsageError(f"{NEEDS_SERVER}; this kernel was not started by one") from None
        except TokenRefused as err:
            raise UsageError(str(err)) from None
        except Refused as err:
            raise UsageError(f"the server refused the policy: {err}") from None
        except ServerError as err:
            raise UsageError(f"the policy was not saved: {err}") from None
        outcome = inprocess.apply_policy(view.get("next_start"))
        inprocess.tell_server(client, outcome)
        return PolicyChangeView(said, outcome, view.get("own"))

    # -- live panel ---------------------------------------------------------------------------

    def _watch(self, interval: float) -> Any:
        try:
            from jupyter_tfgpu.in_kernel.widgets import GPUPanel
        except ImportError:
            return MessageView(
                "%tfgpu watch needs ipywidgets: pip install 'jupyter-tfgpu[widgets]'"
            )
        return GPUPanel(interval=interval)


def _own_policy(view: dict[str, Any]) -> dict[str, Any]:
    """The notebook's own fields (servers without ``own``: those whose source is the notebook)."""
    if "own" in view:
        return dict(view.get("own") or {})
    effective = view.get("policy") or {}
    sources = effective.get("sources") or {}
    return {name: effective.get(name) for name, source in sources.items() if source == "notebook"}


def _framework_lines() -> list[str]:
    """What the bootstrap did in this process, per imported framework (nothing is imported here)."""
    bootstrap = sys.modules.get("tfgpu_bootstrap")
    if bootstrap is None:
        return []
    try:
        frameworks = bootstrap.record().get("frameworks") or {}
    except Exception:  # noqa: BLE001 - the record is a nicety; the status stands without it
        return []
    lines = []
    for name, entry in frameworks.items():
        label = inprocess.LABELS.get(name, name)
        done = [setting_text(i, "=") for i in entry.get("applied") or ()]
        waiting = [setting_text(i, "=") for i in entry.get("pending") or ()]
        skipped = [f"{setting_text(i, '=')} ({i.get('reason')})" for i in entry.get("skipped") or ()]
        parts = [
            f"applied {', '.join(done)}" if done else "",
            f"pending {', '.join(waiting)}" if waiting else "",
        ]
        parts.append(f"skipped {'; '.join(skipped)}" if skipped else "")
        said = "; ".join(p for p in parts if p) or "imported; the policy sets nothing for it"
        lines.append(f"{label}: {said}.")
    return lines



def load_ipython_extension(ipython: Any) -> None:
    """Register ``%tfgpu``, and the explanation below GPU out-of-memory tracebacks."""
    ipython.register_magics(TFGPUMagics)
    oom_hook.install(ipython)

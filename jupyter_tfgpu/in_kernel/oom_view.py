"""What a cell that ran a GPU out of memory shows below its traceback: which GPU, how full it is,
who holds it, this kernel's policy, the ``%tfgpu`` lines that would help, and the idle reaping.

``explain`` is pure: it reads a ``kernel/status`` answer (or this machine's NVML, or nothing when
the server did not answer) and this process's devices and policy, and makes the view.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from jupyter_tfgpu.in_kernel.gpu_rows import GpuRow, gpu_rows
from jupyter_tfgpu.in_kernel.notices import launch_of, limit_line
from jupyter_tfgpu.in_kernel.oom import OutOfMemory, free_bytes, locate
from jupyter_tfgpu.in_kernel.policy_fields import field_named, requested
from jupyter_tfgpu.in_kernel.units import GiB, MiB, format_bytes
from jupyter_tfgpu.in_kernel.views import MPS_SERVER, MUTED, WARN, View, memory_bar_html

RESTART = "Kernel > Restart Kernel"
# What each framework does with GPU memory when memory growth is off.
WITHOUT_GROWTH = {
    "tensorflow": "instead of mapping nearly all of each GPU it sees",
    "jax": "instead of preallocating 75% of the GPU",
}
# The idle action, as what the server does to an idle kernel; restart and shutdown free memory.
REAPING = {
    "restart": "restarts",
    "shutdown": "shuts down",
    "interrupt": "interrupts",
    "warn": "warns about",
}
POLICY_SHOWN = ("memory_growth", "memory_limit_mb", "devices")


@dataclass(frozen=True)
class Holder:
    """One process holding memory on the GPU that ran out."""

    pid: int | None
    memory: int | None
    who: str
    idle_seconds: float | None
    mine: bool
    kernel: bool  # a kernel of this server (whose idleness the server knows)


@dataclass(frozen=True)
class Action:
    """A ``%tfgpu`` line that would help, and why."""

    line: str
    why: str


@dataclass(repr=False)  # View's repr is the text
class OutOfMemoryView(View):
    """The explanation shown below an out-of-memory traceback."""

    headline: str
    limit: str | None = None  # which limit of this kernel's it hit there, and where it is set
    gpu: GpuRow | None = None
    holders: list[Holder] = field(default_factory=list)
    unlisted: int = 0  # bytes in use on the GPU that no listed process holds
    policy: str | None = None
    actions: list[Action] = field(default_factory=list)
    actions_note: str | None = None
    notes: list[str] = field(default_factory=list)

    def _holder_cells(self) -> list[list[str]]:
        cells = [
            [
                format_bytes(h.memory),
                "–" if h.pid is None else str(h.pid),
                h.who,
                _state(h),
            ]
            for h in self.holders
        ]
        if self.unlisted >= 64 * MiB:
            cells.append([format_bytes(self.unlisted), "–", "no listed process (driver)", ""])
        return cells

    def text(self) -> str:
        """Plain text, as the ``%tfgpu`` views write it."""
        lines = [f"jupyter-tfgpu: {self.headline}", *([self.limit] if self.limit else [])]
        cells = self._holder_cells()
        if cells:
            head = ["memory", "PID", "held by", ""]
            widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
            for row in [head, *cells]:
                size, rest = (
                    row[0].rjust(widths[0]),
                    [c.ljust(w) for c, w in zip(row[1:], widths[1:])],
                )
                lines.append("  " + "  ".join([size, *rest]).rstrip())
        if self.policy:
            lines.append(self.policy)
        if self.actions:
            lines.append(self.actions_note or "What would help:")
            width = max(len(a.line) for a in self.actions)
            lines.extend(f"  {a.line.ljust(width)}  {a.why}" for a in self.actions)
        lines.extend(self.notes)
        return "\n".join(lines)

    def html(self) -> str:
        """Compact HTML for the notebook."""
        e = html.escape
        parts = [f'<div style="{WARN}"><b>jupyter-tfgpu:</b> {e(self.headline)}</div>']
        parts += [f"<div>{e(self.limit)}</div>"] if self.limit else []
        if self.gpu is not None and self.gpu.total:
            parts.append(memory_bar_html(self.gpu))
        cells = self._holder_cells()
        if cells:
            rows = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in cells
            )
            head = "".join(
                f'<th style="text-align:left">{h}</th>' for h in ("memory", "PID", "held by", "")
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        if self.policy:
            parts.append(f'<div style="{MUTED}">{e(self.policy)}</div>')
        if self.actions:
            items = "".join(f"<li><code>{e(a.line)}</code>: {e(a.why)}</li>" for a in self.actions)
            parts.append(f"<div>{e(self.actions_note or 'What would help:')}</div><ul>{items}</ul>")
        parts.extend(f'<div style="{MUTED}">{e(note)}</div>' for note in self.notes)
        return '<div class="tfgpu-oom">' + "".join(parts) + "</div>"


def _state(holder: Holder) -> str:
    if not holder.kernel:
        return ""
    return "busy" if holder.idle_seconds is None else f"idle {duration(holder.idle_seconds)}"


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 5 min``, ``3 d 4 h``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def size_option(nbytes: int) -> str:
    """A size as ``--limit`` takes it, rounded down: ``7GiB``, ``768MiB``."""
    if nbytes >= GiB:
        return f"{nbytes // GiB}GiB"
    return f"{max(1, nbytes // MiB)}MiB"


# -- the explanation --------------------------------------------------------------------------


def _holders(gpu: dict[str, Any], status: dict[str, Any]) -> list[Holder]:
    notebook = (status.get("kernel") or {}).get("notebook")
    rows = []
    for process in gpu.get("processes") or ():
        kernel = not status.get("local")
        if process.get("mine"):
            who = f"this kernel ({notebook})" if notebook else "this kernel"
        elif process.get("attributed_by") or process.get("kernel_id"):
            who = "another notebook's kernel on this server"
        elif process.get("mps") == "server":
            kernel, who = False, MPS_SERVER
        else:
            kernel = False
            who = "another process" if status.get("local") else "a process outside this server"
        rows.append(
            Holder(
                pid=process.get("pid"),
                memory=process.get("used_memory"),
                who=who,
                idle_seconds=process.get("idle_seconds"),
                mine=bool(process.get("mine")),
                kernel=kernel,
            )
        )
    return sorted(rows, key=lambda h: -(h.memory or 0))


def _headline(oom: OutOfMemory, row: GpuRow | None, gpu_named: str | None) -> str:
    asked = f"; the allocation asked for {format_bytes(oom.requested)}" if oom.requested else ""
    if row is None:
        where = f"GPU {oom.device}" if oom.device is not None else "the GPU"
        numbering = " as this kernel numbers them" if oom.device is not None else ""
        return f"{oom.label} ran out of GPU memory on {where}{numbering}{asked}."
    free = None if row.total is None or row.used is None else max(0, row.total - row.used)
    fill = (
        f": {format_bytes(row.used)} of {format_bytes(row.total)} in use, {format_bytes(free)} free"
        if free is not None
        else ""
    )
    name = f" ({gpu_named})" if gpu_named else ""
    return f"{oom.label} ran out of GPU memory on GPU {row.index}{name}{fill}{asked}."


def _name(title: str) -> str:
    """A field's title inside a sentence: "Memory limit (MiB)" -> "memory limit"."""
    title = title.split(" (", 1)[0]
    return title[:1].lower() + title[1:]


def _policy_line(kernel: dict[str, Any], running: dict[str, Any] | None) -> str:
    runs = requested(running if running is not None else launch_of(kernel))
    said = ", ".join(
        f"{_name(field_named(name).title)} {field_named(name).format(runs.get(name))}"
        for name in POLICY_SHOWN
    )
    line = f"This kernel runs with: {said}."
    if kernel.get("restart_required"):
        line += (
            f" Its notebook's policy has changed since: restart the kernel ({RESTART}) to use it."
        )
    return line


def _actions(
    oom: OutOfMemory,
    status: dict[str, Any],
    gpu: dict[str, Any] | None,
    row: GpuRow | None,
    running: dict[str, Any],
) -> list[Action]:
    actions = []
    # What the notebook's policy already asks for needs only the restart the view mentions.
    saved = requested((status.get("kernel") or {}).get("policy"))
    growth = True in (running.get("memory_growth"), saved.get("memory_growth"))
    if oom.framework in WITHOUT_GROWTH and not growth:
        actions.append(
            Action(
                "%tfgpu policy --growth",
                f"{oom.label} takes GPU memory as it needs it, {WITHOUT_GROWTH[oom.framework]}",
            )
        )
    free = None if gpu is None else free_bytes(gpu)
    if row is None or free is None:
        return actions
    room = free + (row.mine or 0)  # what this GPU has for this kernel once it restarts
    fits = oom.requested is None or oom.requested <= room  # else no limit makes it fit here
    limit = running.get("memory_limit_mb")
    sources = ((status.get("kernel") or {}).get("policy") or {}).get("sources") or {}
    if limit is None and room >= GiB and fits:
        why = f"take at most what GPU {row.index} has room for now, and leave the rest to others"
        actions.append(Action(f"%tfgpu policy --limit {size_option(room)}", why))
    elif (
        limit is not None and room >= limit * MiB + GiB and sources.get("memory_limit_mb") != "cap"
    ):
        why = (
            f"this kernel's limit is {format_bytes(limit * MiB)}; GPU {row.index} has room for "
            f"{format_bytes(room)} now"
        )
        actions.append(Action(f"%tfgpu policy --limit {size_option(room)}", why))
    emptiest = _emptiest_other(status, gpu)
    # Another GPU, if it has at least 1 GiB more for this kernel than this one.
    if emptiest is not None and free_bytes(emptiest) >= room + GiB:
        auto = "auto" in (running.get("devices"), saved.get("devices"))
        again = "; already set: a restart picks again" if auto else ""
        why = (
            f"let the server pick this kernel's GPU when it starts (GPU {emptiest.get('index')} "
            f"has the most free memory now: {format_bytes(free_bytes(emptiest))}){again}"
        )
        actions.append(Action("%tfgpu policy --devices auto", why))
    return actions


def _emptiest_other(status: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any] | None:
    others = [
        g
        for g in status.get("gpus") or ()
        if g.get("index") != gpu.get("index") and not g.get("lost") and free_bytes(g) is not None
    ]
    return max(others, key=free_bytes, default=None)


def _reaping(status: dict[str, Any], holders: list[Holder]) -> str | None:
    """When the server's idle reaping frees the idle holders' memory, if it is on."""
    rules = status.get("idle_reaping")
    if not isinstance(rules, dict) or not rules.get("timeout"):
        return None
    timeout, action = float(rules["timeout"]), str(rules.get("action"))
    least = int(rules.get("min_memory_mb") or 0) * MiB
    policy = (
        f"The server {REAPING.get(action, action)} kernels idle for {duration(timeout)} that hold "
        f"at least {format_bytes(least)} of GPU memory"
    )
    if action not in ("restart", "shutdown"):
        return policy + ", which frees none of it."
    idle = [
        h for h in holders if not h.mine and h.idle_seconds is not None and (h.memory or 0) >= least
    ]
    if not idle:
        return policy + "; none of the holders above is idle now."
    due = [
        f"PID {h.pid} ({format_bytes(h.memory)}) "
        + (
            "at any moment"
            if h.idle_seconds >= timeout
            else f"in about {duration(timeout - h.idle_seconds)}"
        )
        for h in idle
    ]
    listed = due[0] if len(due) == 1 else f"{', '.join(due[:-1])} and {due[-1]}"
    whose = "its kernel runs" if len(due) == 1 else "their kernels run"
    return f"{policy}; the idle memory here comes back from {listed}, unless {whose} a cell first."


def explain(
    oom: OutOfMemory,
    status: dict[str, Any] | None,
    note: str | None = None,
    visible: str | None = None,
    running: dict[str, Any] | None = None,
) -> OutOfMemoryView:
    """The view of ``oom`` from what the server (or NVML) said; ``note`` says why it said
    nothing or less; ``visible`` is CUDA_VISIBLE_DEVICES, ``running`` the policy in force."""
    if not status or not status.get("gpus"):
        view = OutOfMemoryView(_headline(oom, None, None), notes=_wrapped(oom))
        reason = note or (status or {}).get("reason")
        view.notes.append(
            f"Who holds the GPU's memory is not known here ({reason})."
            if reason
            else "Who holds the GPU's memory is not known here."
        )
        if not (status or {}).get("local"):
            view.notes.append("%tfgpu kernels shows it once the server answers.")
        return _with_actions(view, oom, status or {}, None, None, running)
    gpu, remark = locate(oom, status, visible)
    row = next((r for r in gpu_rows(status) if gpu and r.index == gpu.get("index")), None)
    view = OutOfMemoryView(
        _headline(oom, row, None if row is None else row.name), gpu=row, notes=_wrapped(oom)
    )
    if gpu is not None:
        view.holders = _holders(gpu, status)
        used = (gpu.get("memory") or {}).get("used") or 0
        view.unlisted = max(0, used - sum(h.memory or 0 for h in view.holders))
    elif oom.device is not None:
        view.notes.append(f"This kernel sees no GPU {oom.device} among the server's GPUs.")
    if row is not None and oom.requested and row.total and oom.requested > row.total:
        view.notes.append(
            f"The allocation alone is larger than GPU {row.index} ({format_bytes(row.total)}): "
            "no policy makes room for it there; a smaller batch or model would."
        )
    if remark:
        view.notes.append(remark)
    kernel = status.get("kernel")
    if row is not None:
        view.limit = limit_line(kernel, running, row, oom.requested, oom.label)
    if kernel:
        view.policy = _policy_line(kernel, running)
    if note:
        view.notes.append(note)
    _with_actions(view, oom, status, gpu, row, running)
    if reaping := _reaping(status, view.holders):
        view.notes.append(reaping)
    return view


def _wrapped(oom: OutOfMemory) -> list[str]:
    if not oom.wrapped:
        return []
    return [f"The error above was raised from {oom.label}'s {type(oom.error).__name__}."]


def _with_actions(
    view: OutOfMemoryView,
    oom: OutOfMemory,
    status: dict[str, Any],
    gpu: dict[str, Any] | None,
    row: GpuRow | None,
    running: dict[str, Any] | None,
) -> OutOfMemoryView:
    kernel = status.get("kernel")
    if status.get("local"):
        view.notes.append(
            "GPU policies need the jupyter-tfgpu server; this kernel was not started by one."
        )
        return view
    if kernel is not None and not kernel.get("notebook"):
        view.notes.append("This kernel has no notebook, so it has no GPU policy to change.")
        return view
    runs = requested(running if running is not None else launch_of(kernel))
    view.actions = _actions(oom, status, gpu, row, runs)
    if view.actions:
        view.actions_note = (
            f"What would help (each line saves this notebook's policy; {oom.label} has already set "
            f"up the GPU in this kernel, so it takes effect after a restart: {RESTART}):"
        )
    return view

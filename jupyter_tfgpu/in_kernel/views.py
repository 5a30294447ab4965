"""What ``%tfgpu`` shows: one object per answer, as plain text (terminals) and HTML (notebooks).

Every value that comes from outside (GPU names, notebook paths, server messages) is escaped.
"""

from __future__ import annotations

import html
from typing import Any

from jupyter_tfgpu.in_kernel.gpu_rows import GpuRow, gpu_rows
from jupyter_tfgpu.in_kernel.notices import (
    availability,
    cap_line,
    cap_note,
    enforcement_line,
    enforcement_of,
    launch_of,
    memory_source_note,
    per_gpu_note,
    placement_note,
)
from jupyter_tfgpu.in_kernel.policy_fields import policy_fields, requested
from jupyter_tfgpu.in_kernel.units import format_bytes

SOURCES = {"default": "admin default", "notebook": "this notebook", "cap": "admin cap"}
MINE = "var(--jp-brand-color1, #1976d2)"
OTHERS = "var(--jp-layout-color3, #bdbdbd)"
TRACK = "var(--jp-layout-color2, #eeeeee)"
MUTED = "color: var(--jp-ui-font-color2, #757575)"
WARN = "color: var(--jp-warn-color1, #e65100)"
NOTHING_SET = "Policy: nothing set (the frameworks' own behaviour)."
# NVIDIA's MPS server, which NVML lists in place of its clients (the kernels' GPU work runs in it)
MPS_SERVER = "the MPS server (NVIDIA MPS: kernels' GPU work runs through it)"


def _pct(part: float | None, whole: float | None) -> float:
    return 0.0 if not part or not whole else max(0.0, min(100.0, 100.0 * part / whole))


def _devices_label(value: Any, rows: list[GpuRow]) -> Any:
    """UUIDs as GPU indices where this server knows them (shorter, and what people say)."""
    if not isinstance(value, list):
        return value
    by_uuid = {row.uuid: row.index for row in rows}
    return [by_uuid.get(item, item) if isinstance(item, str) else item for item in value]


def _e(value: Any) -> str:
    return html.escape(str(value))


# -- pieces of HTML --------------------------------------------------------------------------


def _meter(label: str | None, percent: float, said: str) -> str:
    """ARIA attributes that make a bar a meter a screen reader names and reads (none unlabelled)."""
    if label is None:
        return ""
    return (
        f' role="meter" aria-label="{_e(label)}" aria-valuemin="0" aria-valuemax="100"'
        f' aria-valuenow="{percent:.0f}" aria-valuetext="{_e(said)}"'
    )


def memory_bar_html(row: GpuRow, width: int = 220, label: str | None = None) -> str:
    """A bar: this kernel's memory highlighted, then everyone else's, then free (a meter named
    ``label`` for screen readers, when given)."""
    mine, others = _pct(row.mine, row.total), _pct(row.others, row.total)
    title = (
        f"this kernel {format_bytes(row.mine or 0)}, others {format_bytes(row.others)}, "
        f"total {format_bytes(row.total)}"
    )
    return (
        f'<div title="{_e(title)}"{_meter(label, mine + others, title)} style="display:flex;'
        f"flex:none;width:{width}px;height:10px;background:{TRACK};border-radius:2px;"
        f'overflow:hidden"><div style="width:{mine:.1f}%;background:{MINE}"></div>'
        f'<div style="width:{others:.1f}%;background:{OTHERS}"></div></div>'
    )


def utilization_bar_html(row: GpuRow, width: int = 120, label: str | None = None) -> str:
    """A plain percentage bar for GPU utilization (a meter named ``label``, when given)."""
    value = _pct(row.utilization, 100)
    said = "unknown" if row.utilization is None else f"{row.utilization:.0f}% busy"
    return (
        f'<div{_meter(label, value, said)} style="flex:none;width:{width}px;height:10px;'
        f'background:{TRACK};border-radius:2px">'
        f'<div style="width:{value:.1f}%;height:100%;background:{OTHERS}"></div></div>'
    )


def sparkline_svg(
    values: list[float | None],
    top: float = 100.0,
    width: int = 120,
    label: str = "recent history",
) -> str:
    """A tiny SVG line of recent values (gaps for unknown ones), named ``label``."""
    height = 18
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(known) < 2:
        return f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(label)}"></svg>'
    step = width / max(1, len(values) - 1)
    scale = top or max(v for _, v in known) or 1.0
    points = " ".join(
        f"{i * step:.1f},{height - 1 - (height - 2) * min(1.0, max(0.0, v / scale)):.1f}"
        for i, v in known
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        f'<polyline fill="none" stroke="{MINE}" stroke-width="1.5" points="{points}"/></svg>'
    )


def _table(head: list[str], body: list[list[str]]) -> str:
    cells = "".join(f'<th style="text-align:left">{h}</th>' for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>"


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]
    return "\n".join(lines)


# -- the answers ---------------------------------------------------------------------------


class View:
    """Base of the magic's answers: ``text()`` and ``html()``, shown by IPython's formatters."""

    def text(self) -> str:
        """Plain text."""
        raise NotImplementedError

    def html(self) -> str:
        """HTML for the notebook."""
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()


class MessageView(View):
    """One sentence (an error the user can act on, or a notice)."""

    def __init__(self, message: str, warning: bool = True) -> None:
        self.message = message
        self.warning = warning

    def text(self) -> str:
        return f"jupyter-tfgpu: {self.message}"

    def html(self) -> str:
        style = WARN if self.warning else MUTED
        return f'<div style="{style}">jupyter-tfgpu: {_e(self.message)}</div>'


class StatusView(View):
    """``%tfgpu``: the GPUs, this kernel's share, its notebook's policy, and whether to restart."""

    def __init__(
        self,
        status: dict[str, Any],
        running: dict[str, Any] | None = None,
        restart_required: bool | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.data = status
        self.rows = gpu_rows(status)
        self.running = running
        self.restart_required = restart_required
        self.notes = list(notes or [])

    # what both forms say
    def _title(self) -> str:
        kernel = self.data.get("kernel") or {}
        where = "local GPUs (NVML)" if self.data.get("local") else "jupyter-tfgpu"
        if self.data.get("simulated"):
            where += " · simulated GPUs"
        if kernel.get("notebook"):
            where += f" · notebook {kernel['notebook']}"
        return where

    def _gpu_cells(self) -> list[list[str]]:
        return [
            [
                str(r.index),
                r.name + (" (lost)" if r.lost else ""),
                "–" if r.utilization is None else f"{r.utilization:.0f}%",
                f"{format_bytes(r.used)} / {format_bytes(r.total)}",
                format_bytes(r.mine or 0)
                + (" (own report)" if r.mine_source == "kernel_report" else ""),
            ]
            for r in self.rows
        ]

    def _policy_cells(self) -> list[list[str]]:
        kernel = self.data.get("kernel")
        if not kernel:
            return []
        effective = kernel.get("policy") or {}
        sources = effective.get("sources") or {}
        running = requested(self.running if self.running is not None else launch_of(kernel))
        cells = []
        for field in policy_fields():
            now, was = effective.get(field.name), running.get(field.name)
            if now is None and was is None:
                continue
            cells.append(
                [
                    field.title,
                    field.format(_devices_label(now, self.rows)),
                    SOURCES.get(sources.get(field.name), "–"),
                    field.format(_devices_label(was, self.rows)),
                ]
            )
        return cells

    def _verdict(self) -> str | None:
        if not self.data.get("kernel"):
            return None
        if self.restart_required:
            return (
                "Restart required: this kernel runs with another policy than its notebook now has "
                "(Kernel > Restart Kernel)."
            )
        return "This kernel runs with its notebook's policy."

    def _lines(self) -> list[tuple[str, bool]]:
        """Notes and warnings, each with whether it is a warning (else a calm remark)."""
        lines = [(note, True) for note in self.notes]
        if said := availability(self.data):
            lines.append(said)
        if note := placement_note(self.data.get("kernel")):
            lines.append((note, True))
        if said := memory_source_note(self.data.get("kernel")):
            lines.append(said)
        if line := cap_line(self.data.get("kernel")):
            lines.append((line, False))
        if note := cap_note(self.data.get("kernel")):
            lines.append((note, True))
        kernel = self.data.get("kernel")
        if held := enforcement_line(enforcement_of(kernel, self.running)):
            lines.append((held, False))
        if each := per_gpu_note(kernel, self.running, self.rows):
            lines.append((each, False))
        return lines

    def text(self) -> str:
        parts = [self._title()]
        if self.rows:
            parts.append(
                _text_table(["GPU", "name", "util", "memory", "this kernel"], self._gpu_cells())
            )
        policy = self._policy_cells()
        if self.data.get("kernel"):
            parts.append(
                _text_table(["policy", "in force", "from", "this kernel runs"], policy)
                if policy
                else NOTHING_SET
            )
        parts.extend(line for line, _ in self._lines())
        if verdict := self._verdict():
            parts.append(verdict)
        return "\n".join(parts)

    def html(self) -> str:
        parts = [f"<div><b>{_e(self._title())}</b></div>"]
        if self.rows:
            body = [
                [
                    _e(r.index),
                    _e(r.name) + (" <i>(lost)</i>" if r.lost else ""),
                    utilization_bar_html(r) + f'<span style="{MUTED}">{_e(cells[2])}</span>',
                    memory_bar_html(r) + f'<span style="{MUTED}">{_e(cells[3])}</span>',
                    f'<span style="color:{MINE}">{_e(cells[4])}</span>',
                ]
                for r, cells in zip(self.rows, self._gpu_cells())
            ]
            parts.append(_table(["GPU", "name", "utilization", "memory", "this kernel"], body))
        if self.data.get("kernel"):
            policy = self._policy_cells()
            parts.append(
                _table(
                    ["policy", "in force", "from", "this kernel runs"],
                    [[_e(c) for c in r] for r in policy],
                )
                if policy
                else f'<div style="{MUTED}">{_e(NOTHING_SET)}</div>'
            )
        parts.extend(
            f'<div style="{WARN if warning else MUTED}">{_e(line)}</div>'
            for line, warning in self._lines()
        )
        if verdict := self._verdict():
            style = WARN if self.restart_required else MUTED
            parts.append(f'<div style="{style}">{_e(verdict)}</div>')
        return '<div class="tfgpu-status">' + "".join(parts) + "</div>"


class KernelsView(View):
    """``%tfgpu kernels``: who holds memory on each GPU."""

    def __init__(self, status: dict[str, Any], notes: list[str] | None = None) -> None:
        self.data = status
        self.rows = gpu_rows(status)
        self.notes = list(notes or [])

    def _holder(self, process: dict[str, Any]) -> str:
        if process.get("mine"):
            notebook = (self.data.get("kernel") or {}).get("notebook")
            return f"this kernel ({notebook})" if notebook else "this kernel"
        if process.get("attributed_by") or process.get("kernel_id"):
            return "another kernel of this server"
        if process.get("mps") == "server":
            return MPS_SERVER
        return "a process outside this server" if not self.data.get("local") else "another process"

    def _cells(self) -> list[list[str]]:
        cells = []
        for gpu in self.data.get("gpus") or ():
            for process in gpu.get("processes") or ():
                cells.append(
                    [
                        str(gpu.get("index")),
                        str(process.get("pid")),
                        format_bytes(process.get("used_memory")),
                        self._holder(process),
                    ]
                )
        return cells

    def _empty(self) -> str:
        said = availability(self.data)
        return said[0] if said else "No process holds GPU memory."

    def text(self) -> str:
        cells = self._cells()
        table = _text_table(["GPU", "PID", "memory", "held by"], cells) if cells else self._empty()
        return "\n".join([table, *self.notes])

    def html(self) -> str:
        cells = self._cells()
        if cells:
            table = _table(["GPU", "PID", "memory", "held by"], [[_e(c) for c in r] for r in cells])
        else:
            fault = (availability(self.data) or ("", False))[1]
            table = f'<div style="{WARN if fault else MUTED}">{_e(self._empty())}</div>'
        return table + "".join(f'<div style="{WARN}">{_e(note)}</div>' for note in self.notes)


class PolicyChangeView(View):
    """``%tfgpu policy ...``: what was saved, and whether it took effect in this kernel."""

    def __init__(self, saved: str, outcome: Any, policy: dict[str, Any] | None) -> None:
        self.saved = saved
        self.outcome = outcome
        self.policy = policy or {}

    def _fields(self) -> list[str]:
        return [
            f"{field.title}: {field.format(self.policy.get(field.name))}"
            for field in policy_fields()
            if self.policy.get(field.name) is not None
        ]

    def text(self) -> str:
        lines = [self.saved, *(f"  {line}" for line in self._fields()), self.outcome.message]
        lines.extend(f"  {line}" for line in self.outcome.details)
        return "\n".join(lines)

    def html(self) -> str:
        style = WARN if self.outcome.restart_required else ""
        fields = "".join(f"<li>{_e(line)}</li>" for line in self._fields())
        details = "".join(f"<li>{_e(line)}</li>" for line in self.outcome.details)
        return (
            f"<div>{_e(self.saved)}</div>"
            + (f"<ul>{fields}</ul>" if fields else "")
            + f'<div style="{style}"><b>{_e(self.outcome.message)}</b></div>'
            + (f'<ul style="{MUTED}">{details}</ul>' if details else "")
        )

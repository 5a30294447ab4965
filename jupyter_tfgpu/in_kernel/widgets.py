"""``GPUPanel``: live GPU bars in a notebook, updated from a daemon thread.

The thread only sets widget traits (batched with ``hold_sync()``); it never writes to an
``Output`` widget (``with out:`` from a thread sends output to whichever cell runs at the time),
so it behaves the same on ipykernel 6 and 7. Every panel's thread stops on ``close()`` and when
the kernel exits (``atexit``).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from traitlets import Float, Unicode

from jupyter_tfgpu.in_kernel.client import NotConfigured, ServerClient, ServerError, TokenRefused
from jupyter_tfgpu.in_kernel.inprocess import restart_required, running_policy
from jupyter_tfgpu.in_kernel.local import local_status
from jupyter_tfgpu.in_kernel.gpu_rows import GpuRow, gpu_rows
from jupyter_tfgpu.in_kernel.notices import (
    availability,
    cap_line,
    cap_note,
    enforcement_line,
    enforcement_of,
    memory_source_note,
    per_gpu_note,
    placement_note,
)
from jupyter_tfgpu.in_kernel.views import (
    MINE,
    MUTED,
    WARN,
    _e,
    memory_bar_html,
    sparkline_svg,
    utilization_bar_html,
)
from jupyter_tfgpu.in_kernel.units import format_bytes

THREAD_PREFIX = "tfgpu-widget"
MAX_BACKOFF = 30.0
_running: weakref.WeakSet[Poller] = weakref.WeakSet()


class Poller:
    """Calls ``tick()`` from a daemon thread every ``interval`` seconds until stopped.

    ``tick`` returns False to stop for good (e.g. the server refused the token); an exception
    from it is the caller's business to show, and only stretches the wait (up to 30 s).
    """

    def __init__(self, tick: Callable[[], bool | None], interval: float, name: str) -> None:
        self.interval = max(0.05, float(interval))
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{THREAD_PREFIX}-{name}", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        _running.add(self)
        self._thread.start()

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            try:
                if self._tick() is False:
                    return
                delay = self.interval
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad update
                delay = min(MAX_BACKOFF, delay * 2)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 6.0) -> None:
        """Stop the thread and wait for it (a request in flight ends within its timeout)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        _running.discard(self)


@atexit.register
def stop_all() -> None:
    """Stop every panel's thread (the kernel is shutting down)."""
    for poller in list(_running):
        poller.stop(timeout=1.0)


class GpuSource:
    """Where a panel reads GPUs from: the server's kernel channel, else local NVML."""

    def __init__(self, client: ServerClient | None = None) -> None:
        if client is None:
            try:
                client = ServerClient.from_env()
            except NotConfigured:
                client = None
        self.client = client

    def status(self) -> tuple[dict[str, Any], str | None]:
        """A ``kernel/status``-shaped snapshot, and a problem to show (or None)."""
        if self.client is None:
            return local_status(), "not started by a jupyter-tfgpu server: local GPUs through NVML"
        try:
            return self.client.status(), None
        except TokenRefused:
            raise
        except ServerError as err:
            return local_status(), str(err)

    def history(self, seconds: float) -> dict[str, Any] | None:
        """The server's recent series, to start the sparklines with (None when unavailable)."""
        if self.client is None:
            return None
        try:
            return self.client.history(seconds)
        except ServerError:
            return None


# The row's layout, from 480 to 1600 px and wider: the parts have fixed widths, so every row
# breaks at the same places and the columns line up; a part wraps only whole (below ~700 px the
# bars go under the name), and every value is one unbreakable unit ("355.1 MiB / 16.0 GiB").
NAME_WIDTH = "16em"
BARS_WIDTH = "35em"  # what the bars need beside the name, else they go under it
MEMORY_WIDTH = "21em"  # the memory bar and this kernel's figure need this much
GAP = "2px 12px"
NOWRAP = "white-space:nowrap;font-variant-numeric:tabular-nums"


def _wrapping(**layout: str) -> widgets.Layout:
    """A flex row whose items wrap as whole items."""
    return widgets.Layout(
        display="flex", flex_flow="row wrap", align_items="center", grid_gap=GAP, **layout
    )


def _at_least(width: str) -> str:
    """A minimum width that never overflows a narrower container."""
    return f"min({width}, 100%)"


class _GpuRowWidget(widgets.Box):
    """One GPU: name, utilization bar, sparkline, memory bar with this kernel's share."""

    def __init__(self, history_seconds: float = 60.0) -> None:
        self.label = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", margin="0"))
        self.utilization = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", margin="0"))
        self.sparkline = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", margin="0"))
        self.memory = widgets.HTML(
            layout=widgets.Layout(
                flex=f"1 1 {MEMORY_WIDTH}", min_width=_at_least(MEMORY_WIDTH), margin="0"
            )
        )
        self._span = _span(history_seconds)
        self._bars = widgets.Box(
            [self.utilization, self.sparkline, self.memory],
            layout=_wrapping(flex=f"1 1 {BARS_WIDTH}", min_width=_at_least(BARS_WIDTH)),
        )
        super().__init__([self.label, self._bars], layout=_wrapping(width="100%"))
        self.add_class("tfgpu-GpuRow")

    def show(self, row: GpuRow, series: list[float | None]) -> None:
        """Set every part from one snapshot row (one comm message per part)."""
        gpu = f"GPU {row.index}"
        name = f"{gpu} {row.name}" + (" (lost)" if row.lost else "")
        with self.label.hold_sync():
            self.label.value = (
                f'<div data-tfgpu-col="name" title="{_e(name)}" style="width:{NAME_WIDTH};'
                f'{NOWRAP};overflow:hidden;text-overflow:ellipsis"><b>{gpu}</b> {_e(row.name)}'
                + (" <i>(lost)</i>" if row.lost else "")
                + "</div>"
            )
        busy = "–" if row.utilization is None else f"{row.utilization:.0f}%"
        with self.utilization.hold_sync():
            self.utilization.value = (
                f'<div data-tfgpu-col="utilization" style="display:flex;align-items:center;'
                f'gap:8px">{utilization_bar_html(row, 72, label=f"{gpu} utilization")}'
                f'<span style="{NOWRAP};min-width:6.5em">{busy} busy</span></div>'
            )
        held = f"{format_bytes(row.used)} / {format_bytes(row.total)}"
        mine = format_bytes(row.mine or 0)
        if row.mine_source == "kernel_report":
            mine += " (own report)"
        bar = memory_bar_html(row, 100, label=f"{gpu} memory")
        self.memory.value = (
            f'<div style="display:flex;flex-wrap:wrap;align-items:center;column-gap:12px">'
            f'<span data-tfgpu-col="memory" style="display:flex">{bar}</span>'
            f'<span data-tfgpu-col="mine" style="{NOWRAP};min-width:11.5em;color:{MINE}">'
            f"this kernel {_e(mine)}</span>"
            f'<span data-tfgpu-col="total" style="{NOWRAP};{MUTED}">{_e(held)}</span></div>'
        )
        label = f"{gpu} utilization over the last {self._span}"
        self.sparkline.value = (
            f'<span data-tfgpu-col="sparkline" title="utilization over the last {self._span}" '
            f'style="display:flex">{sparkline_svg(series, label=label)}</span>'
        )

    def parts(self) -> list[widgets.Widget]:
        """Every widget of the row, for closing."""
        return [self, self._bars, self.label, *self._bars.children]


def _span(seconds: float) -> str:
    """``60 seconds``, ``5 minutes``: how far back a sparkline reaches."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


class GPUPanel(widgets.VBox):
    """Live utilization and memory per GPU, this kernel's share highlighted, recent history."""

    timestamp = Float(None, allow_none=True, help="When the shown snapshot was taken.").tag(
        sync=True
    )
    error = Unicode("", help="Why the panel shows no fresh data, if it does not.").tag(sync=True)

    def __init__(
        self,
        interval: float = 1.0,
        history_seconds: float = 60.0,
        source: GpuSource | None = None,
        **kwargs: Any,
    ) -> None:
        self._header = widgets.HTML()
        self._rows: list[_GpuRowWidget] = []
        self._history_seconds = history_seconds
        super().__init__(children=[self._header], **kwargs)
        self.add_class("tfgpu-GPUPanel")
        self._source = source or GpuSource()
        self._points = max(2, int(history_seconds / max(0.05, interval)))
        self._series: dict[int, deque[tuple[float, float | None]]] = {}
        self._closed = False
        self._seed(history_seconds)
        self._poller = Poller(self.refresh, interval, "panel")
        if self.refresh():
            self._poller.start()

    def _seed(self, seconds: float) -> None:
        history = self._source.history(seconds) or {}
        times = history.get("timestamps") or []
        for gpu in history.get("gpus") or ():
            values = gpu.get("utilization") or []
            self._series[gpu["index"]] = deque(zip(times, values), maxlen=self._points)

    def refresh(self) -> bool:
        """Read the GPUs once and update the panel; False once the server refused the token."""
        if self._closed:
            return False
        try:
            status, problem = self._source.status()
        except TokenRefused as err:
            self._show_error(str(err))
            return False
        rows = gpu_rows(status)
        stamp = status.get("timestamp")
        for row in rows:
            series = self._series.setdefault(row.index, deque(maxlen=self._points))
            if stamp is not None and (not series or series[-1][0] < stamp):
                series.append((stamp, row.utilization))
        if self._closed:
            return False
        self._show(status, rows, problem)
        return True

    def _show(self, status: dict[str, Any], rows: list[GpuRow], problem: str | None) -> None:
        while len(self._rows) < len(rows):
            self._rows.append(_GpuRowWidget(self._history_seconds))
        for widget, row in zip(self._rows, rows):
            widget.show(row, [v for _, v in self._series.get(row.index, ())])
        with self._header.hold_sync():
            self._header.value = self._header_html(status, rows, problem)
        with self.hold_sync():
            self.timestamp = status.get("timestamp")
            self.error = problem or ("" if rows else str(status.get("reason") or "no GPU"))
            children = (self._header, *self._rows[: len(rows)])
            if tuple(self.children) != children:
                self.children = children

    def _header_html(self, status: dict[str, Any], rows: list[GpuRow], problem: str | None) -> str:
        kernel = status.get("kernel") or {}
        title = "GPUs" + (" (simulated)" if status.get("simulated") else "")
        stamp = status.get("timestamp")
        when = time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else "–"
        # Each piece wraps whole; the separator belongs to the notebook's name.
        heading = [f'<b style="{NOWRAP}">{_e(title)}</b>']
        if notebook := kernel.get("notebook"):
            heading.append(
                f'<b title="{_e(notebook)}" style="{NOWRAP};display:inline-block;max-width:100%;'
                f'overflow:hidden;text-overflow:ellipsis;vertical-align:bottom">· {_e(notebook)}</b>'
            )
        heading.append(f'<span style="{NOWRAP};{MUTED}">updated {when}</span>')
        parts = [" ".join(heading)]
        if not rows:
            said, fault = availability(status) or (
                f"No GPU: {status.get('reason') or 'no GPU backend'}.",
                False,
            )
            parts.append(f'<div style="{WARN if fault else MUTED}">{_e(said)}</div>')
        if problem:
            parts.append(f'<div style="{WARN}">{_e(problem)}</div>')
        if note := placement_note(kernel):
            parts.append(f'<div style="{WARN}">{_e(note)}</div>')
        # What %tfgpu says of where this kernel's figure comes from and of its cap.
        if source := memory_source_note(kernel):
            line, warning = source
            parts.append(f'<div style="{WARN if warning else MUTED}">{_e(line)}</div>')
        if line := cap_line(kernel):
            parts.append(f'<div style="{MUTED}">{_e(line)}</div>')
        if cap := cap_note(kernel):
            parts.append(f'<div style="{WARN}">{_e(cap)}</div>')
        if held := enforcement_line(enforcement_of(kernel, running_policy())):
            parts.append(f'<div style="{MUTED}">{_e(held)}</div>')
        if each := per_gpu_note(kernel, running_policy(), rows):
            parts.append(f'<div style="{MUTED}">{_e(each)}</div>')
        if restart_required(kernel):
            said = "This notebook's policy changed: restart the kernel to apply it."
            parts.append(f'<div style="{WARN}">{_e(said)}</div>')
        return "".join(parts)

    def _show_error(self, message: str) -> None:
        if self._closed:
            return
        with self._header.hold_sync():
            self._header.value = f'<div style="{WARN}">{_e(message)}</div>'
        self.error = message

    @property
    def updating(self) -> bool:
        """Whether the update thread runs."""
        return self._poller.alive

    def close(self) -> None:
        """Stop the update thread, then close the panel and its parts."""
        self._closed = True
        self._poller.stop()
        self._header.close()
        for row in self._rows:
            for part in row.parts():
                part.close()
        super().close()

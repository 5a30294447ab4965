"""``PolicyEditor``: this notebook's GPU policy as a form, one control per field of the schema.

The form shows the notebook's own policy; beside each control, what is in force and where it
comes from (admin default, admin cap). Save stores the policy through the server and applies it
in this kernel when the frameworks still allow it, else says that a restart is needed. A daemon
thread reads the server's view every second: the hints follow it, and so do the controls when
the policy was saved elsewhere (the sidebar, ``%tfgpu``, another tab) - unless the form has
unsaved edits, which are kept with a notice and a Reload button. It stops on ``close()`` and at
kernel exit.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
from traitlets import Bool, Unicode

from jupyter_tfgpu.in_kernel.client import NotConfigured, Refused, ServerClient, ServerError, TokenRefused
from jupyter_tfgpu.in_kernel.inprocess import apply_policy, restart_required, tell_server
from jupyter_tfgpu.in_kernel.policy_fields import PolicyField, policy_fields
from jupyter_tfgpu.in_kernel.views import MUTED, SOURCES, WARN, _e
from jupyter_tfgpu.in_kernel.widgets import Poller

NOT_SET = "not set"
# Each field is a row: its control (the field's name is the control's label, so screen readers
# read it), then what is in force. The controls have one width, so the rows line up at any width;
# the hint goes beside them down to ~480 px of output and wraps only between whole values.
LABEL_WIDTH = "11em"
CONTROL = widgets.Layout(width="24em", flex="0 0 auto")
HINT_WIDTH = "9em"
NOWRAP = "white-space:nowrap"
# ipywidgets draws no focus on inputs and selects (`outline: none !important`): a keyboard user
# must see where the focus is.
FOCUS_STYLE = (
    "<style>.tfgpu-PolicyEditor :is(select, input, button):focus-visible {"
    " outline: 2px solid var(--jp-brand-color1, #1976d2) !important; outline-offset: 1px; }"
    "</style>"
)


def _row(children: list[widgets.Widget], **layout: str) -> widgets.Box:
    """A flex row whose items wrap as whole items."""
    return widgets.Box(
        children,
        layout=widgets.Layout(
            display="flex", flex_flow="row wrap", align_items="center", grid_gap="0 12px", **layout
        ),
    )


class _FieldControl:
    """The control for one policy field, and its "in force" hint."""

    def __init__(self, field: PolicyField, gpus: list[dict[str, Any]]) -> None:
        self.field = field
        self.hint = widgets.HTML(
            layout=widgets.Layout(flex=f"1 1 {HINT_WIDTH}", min_width=f"min({HINT_WIDTH}, 100%)")
        )
        self.gpus: list[widgets.Checkbox] = []
        # Each box's GPU: its index and UUID, so a policy may name it either way.
        self._gpu_names: list[tuple[int, str | None]] = [(g["index"], g.get("uuid")) for g in gpus]
        # The devices last shown, and which boxes that ticked: read back as they were while the
        # user leaves the boxes alone (a MIG slice has no box).
        self._shown: tuple[list[Any], list[bool]] | None = None
        labelled = {
            "description": field.title,
            "tooltip": field.description,
            "style": {"description_width": LABEL_WIDTH},
            "layout": CONTROL,
        }
        if field.kind == "bool":
            # A drop-down rather than toggle buttons: a screen reader says which one is chosen.
            self.input: widgets.Widget = widgets.Dropdown(
                options=[NOT_SET, "on", "off"], **labelled
            )
        elif field.kind == "enum":
            self.input = widgets.Dropdown(options=[NOT_SET, *map(str, field.choices)], **labelled)
        elif field.name == "devices":
            modes = [NOT_SET, "these GPUs", "CPU only"] + (
                ["auto"] if "auto" in field.aliases else []
            )
            self.input = widgets.Dropdown(options=modes, **labelled)
            self.gpus = [
                widgets.Checkbox(
                    description=f"GPU {g['index']}",
                    tooltip=f'Let the kernel see GPU {g["index"]} (with "these GPUs")',
                    indent=False,
                    layout=widgets.Layout(width="auto"),
                )
                for g in gpus
            ]
        else:
            example = (
                "e.g. 4GiB" if field.kind == "mib" else "e.g. 0,1" if field.kind == "list" else ""
            )
            self.input = widgets.Text(
                placeholder=f"{NOT_SET} ({example})" if example else NOT_SET, **labelled
            )
        parts = [self.input, self.hint]
        if self.gpus:
            # On a line of their own, under the drop-down they belong to.
            parts.append(
                _row(self.gpus, flex="1 0 100%", margin=f"0 0 0 calc({LABEL_WIDTH} + 8px)")
            )
        self.row = _row(parts, width="100%")
        self.row.add_class("tfgpu-PolicyRow")

    def get(self) -> Any:
        """The value in the form (None: not set); ValueError names the field."""
        value = self.input.value
        if value in (NOT_SET, "", None):
            return None
        if self.field.kind == "bool":
            return value == "on"
        if self.field.name == "devices":
            if value == "CPU only":
                return []
            if value == "auto":
                return "auto"
            ticked = [box.value for box in self.gpus]
            if self._shown is not None and ticked == self._shown[1]:
                return list(self._shown[0])
            by_uuid = self._shown is not None and all(isinstance(d, str) for d in self._shown[0])
            return [
                uuid if by_uuid and uuid else index
                for (index, uuid), box in zip(self._gpu_names, self.gpus)
                if box.value
            ]
        return self.field.parse(value)

    def set(self, value: Any) -> None:
        """Show a value of the notebook's own policy."""
        if self.field.kind == "bool":
            self.input.value = NOT_SET if value is None else "on" if value else "off"
        elif self.field.kind == "enum":
            self.input.value = NOT_SET if value is None else str(value)
        elif self.field.name == "devices":
            self.input.value = (
                NOT_SET
                if value is None
                else "CPU only"
                if value == []
                else "auto"
                if value == "auto"
                else "these GPUs"
            )
            chosen = {str(v) for v in value} if isinstance(value, list) else set()
            for (index, uuid), box in zip(self._gpu_names, self.gpus):
                box.value = str(index) in chosen or uuid in chosen
            shown = list(value) if isinstance(value, list) and value else None
            self._shown = (shown, [box.value for box in self.gpus]) if shown else None
        else:
            self.input.value = "" if value is None else self.field.format(value).replace(" ", "")

    def show_effective(self, effective: dict[str, Any]) -> None:
        """What is in force for this field and where it comes from."""
        value = effective.get(self.field.name)
        source = (effective.get("sources") or {}).get(self.field.name)
        # Whole values only break: "in force: 4.0 GiB" and "(admin cap)", and a list at its commas.
        pieces = self.field.format(value).split(", ")
        units = [f"{piece}," for piece in pieces[:-1]] + pieces[-1:]
        units[0] = f"in force: {units[0]}"
        if source in SOURCES:
            units.append(f"({SOURCES[source]})")
        said = " ".join(f'<span style="{NOWRAP}">{_e(unit)}</span>' for unit in units)
        self.hint.value = f'<div data-tfgpu-col="hint" style="line-height:1.4;{MUTED}">{said}</div>'

    def parts(self) -> list[widgets.Widget]:
        """Every widget of the row, for closing."""
        return [self.row, *self.row.children, *self.gpus]


class PolicyEditor(widgets.VBox):
    """Edit this notebook's GPU policy: one control per field, Save, and a restart hint."""

    restart_required = Bool(False, help="Whether this kernel must restart to run the policy.").tag(
        sync=True
    )
    message = Unicode("", help="The outcome of the last Save or Remove.").tag(sync=True)
    changed_elsewhere = Bool(
        False, help="Whether the saved policy changed while the form has unsaved edits."
    ).tag(sync=True)

    def __init__(
        self, interval: float = 1.0, client: ServerClient | None = None, **kwargs: Any
    ) -> None:
        self._state = widgets.HTML()
        self._said = widgets.HTML()
        self._controls: list[_FieldControl] = []
        self._save = widgets.Button(description="Save", button_style="primary")
        self._remove = widgets.Button(description="Remove policy")
        self._conflict = widgets.HTML(layout=widgets.Layout(flex="1 1 20em"))
        self._reload = widgets.Button(
            description="Reload",
            tooltip="Show the saved policy; drops the edits made here",
            layout=widgets.Layout(display="none"),
        )
        self._base: dict[str, Any] = {}  # the saved policy the controls started from
        self._saved: dict[str, Any] = {}  # the saved policy as last read
        super().__init__(**kwargs)
        self.add_class("tfgpu-PolicyEditor")
        self._poller: Poller | None = None
        try:
            self._client = client or ServerClient.from_env()
            view = self._client.policy()
            gpus = self._client.status().get("gpus") or []
        except NotConfigured as err:
            self._disable(f"{err}.")
            return
        except ServerError as err:
            self._disable(f"{err}.")
            return
        self._controls = [_FieldControl(field, gpus) for field in policy_fields()]
        self._load(view.get("own") or {})
        self._save.on_click(lambda _: self.save())
        self._remove.on_click(lambda _: self.remove())
        self._reload.on_click(lambda _: self._load(self._saved))
        self.children = [
            widgets.HTML(FOCUS_STYLE, layout=widgets.Layout(display="none")),
            *(c.row for c in self._controls),
            _row([self._save, self._remove]),
            _row([self._conflict, self._reload]),
            self._said,
            self._state,
        ]
        self._show_view(view)
        self._poller = Poller(self.refresh, interval, "policy-editor")
        self._poller.start()

    def _disable(self, why: str) -> None:
        self._client = None
        self.message = why
        self._said.value = f'<div style="{WARN}">{_e(why)}</div>'
        self.children = [self._said]

    def _show_view(self, view: dict[str, Any]) -> None:
        """Hints and the restart line from the server's view of this kernel."""
        for control in self._controls:
            control.show_effective(view.get("policy") or {})
        restart = restart_required(view)
        line = (
            "This kernel runs with another policy than the saved one: restart it to apply "
            "(Kernel > Restart Kernel)."
            if restart
            else f"This kernel runs with the policy of {view.get('notebook') or 'its notebook'}."
        )
        with self._state.hold_sync():
            self._state.value = f'<div style="{WARN if restart else MUTED}">{_e(line)}</div>'
        self.restart_required = restart

    def _load(self, own: dict[str, Any]) -> None:
        """Set every control to the saved policy ``own``, dropping edits."""
        for control in self._controls:
            control.set(own.get(control.field.name))
        self._base = self._saved = dict(own)
        self._show_conflict(False)

    def _show_conflict(self, conflict: bool) -> None:
        self.changed_elsewhere = conflict
        self._conflict.value = (
            f'<div style="{WARN}">This notebook\'s policy was changed elsewhere while you were '
            "editing. Save keeps your edits; Reload shows the saved policy and drops them.</div>"
            if conflict
            else ""
        )
        self._reload.layout.display = None if conflict else "none"

    def _follow(self, own: dict[str, Any]) -> None:
        """The saved policy is ``own`` now: show it, unless that would lose the user's edits."""
        self._saved = own
        if own == self._base:
            if self.changed_elsewhere:
                self._show_conflict(False)  # changed back
            return
        current = self.policy_or_none()  # None: half-typed input, which counts as an edit
        if current != self._base and current != own:
            self._show_conflict(True)
        else:
            self._load(own)

    def policy_or_none(self) -> dict[str, Any] | None:
        """The form's policy, or None while an input is not valid."""
        try:
            return self.policy()
        except ValueError:
            return None

    def refresh(self) -> bool:
        """Re-read the server's view (from the update thread); False stops the thread."""
        if self._client is None:
            return False
        try:
            view = self._client.policy()
        except TokenRefused as err:
            self._tell(str(err), warn=True)
            return False
        self._follow(view.get("own") or {})
        self._show_view(view)
        return True

    def _tell(self, message: str, warn: bool) -> None:
        with self.hold_sync():
            self.message = message
        self._said.value = f'<div style="{WARN if warn else ""}"><b>{_e(message)}</b></div>'

    def policy(self) -> dict[str, Any]:
        """The policy the form describes (fields not set are left out); ValueError if one is bad."""
        values = {c.field.name: c.get() for c in self._controls}
        return {name: value for name, value in values.items() if value is not None}

    def save(self) -> None:
        """Store the form as this notebook's policy, then apply it here if possible."""
        try:
            policy = self.policy()
        except ValueError as err:
            self._tell(str(err), warn=True)
            return
        self._submit(lambda client: client.set_policy(policy), "Saved.")

    def remove(self) -> None:
        """Remove this notebook's own policy."""
        for control in self._controls:
            control.set(None)
        self._submit(lambda client: client.reset_policy(), "Removed this notebook's policy.")

    def _submit(self, call: Any, done: str) -> None:
        if self._client is None:
            return
        try:
            view = call(self._client)
        except Refused as err:
            self._tell(f"Not saved: {err}", warn=True)
            return
        except ServerError as err:
            self._tell(f"Not saved: {err}", warn=True)
            return
        outcome = apply_policy(view.get("next_start"))
        tell_server(self._client, outcome)
        self._load(view.get("own") or {})
        self._show_view(view)
        self._tell(f"{done} {outcome.message}", warn=outcome.restart_required)

    @property
    def inputs(self) -> dict[str, widgets.Widget]:
        """The form's control for each field, by field name."""
        return {c.field.name: c.input for c in self._controls}

    @property
    def save_button(self) -> widgets.Button:
        """The Save button."""
        return self._save

    @property
    def updating(self) -> bool:
        """Whether the update thread runs."""
        return self._poller is not None and self._poller.alive

    def close(self) -> None:
        """Stop the update thread, then close the form and its parts."""
        if self._poller is not None:
            self._poller.stop()
        for part in [self._state, self._said, self._save, self._remove, self._conflict, self._reload]:
            part.close()
        for control in self._controls:
            for part in control.parts():
                part.close()
        for child in self.children:
            child.close()
        super().close()

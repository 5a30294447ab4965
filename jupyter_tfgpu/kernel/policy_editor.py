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

from jupyter_tfgpu.kernel.client import NotConfigured, Refused, ServerClient, ServerError, TokenRefused
from jupyter_tfgpu.kernel.inprocess import apply_policy, restart_required, tell_server
from jupyter_tfgpu.kernel.policy_fields import PolicyField, policy_fields
from jupyter_tfgpu.kernel.views import MUTED, SOURCES, WARN, _e
from jupyter_tfgpu.kernel.widgets import Poller

NOT_SET = "not set"
WIDE = widgets.Layout(width="160px")


class _FieldControl:
    """The control for one policy field, and its "in force" hint."""

    def __init__(self, field: PolicyField, gpus: list[dict[str, Any]]) -> None:
        self.field = field
        self.hint = widgets.HTML()
        self.gpus: list[widgets.Checkbox] = []
        if field.kind == "bool":
            self.input: widgets.Widget = widgets.ToggleButtons(options=[NOT_SET, "on", "off"])
        elif field.kind == "enum":
            self.input = widgets.Dropdown(options=[NOT_SET, *map(str, field.choices)])
        elif field.name == "devices":
            modes = [NOT_SET, "these GPUs", "CPU only"] + (
                ["auto"] if "auto" in field.aliases else []
            )
            self.input = widgets.Dropdown(options=modes, layout=WIDE)
            self.gpus = [
                widgets.Checkbox(
                    description=f"GPU {g['index']}",
                    indent=False,
                    layout=widgets.Layout(width="80px"),
                )
                for g in gpus
            ]
        else:
            example = (
                "e.g. 4GiB" if field.kind == "mib" else "e.g. 0,1" if field.kind == "list" else ""
            )
            self.input = widgets.Text(
                placeholder=f"{NOT_SET} ({example})" if example else NOT_SET, layout=WIDE
            )
        title = widgets.HTML(
            f'<span title="{_e(field.description)}">{_e(field.title)}</span>', layout=WIDE
        )
        self.row = widgets.HBox([title, self.input, *self.gpus, self.hint])

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
            return [int(box.description.split()[-1]) for box in self.gpus if box.value]
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
            for box in self.gpus:
                box.value = box.description.split()[-1] in chosen
        else:
            self.input.value = "" if value is None else self.field.format(value).replace(" ", "")

    def show_effective(self, effective: dict[str, Any]) -> None:
        """What is in force for this field and where it comes from."""
        value = effective.get(self.field.name)
        source = (effective.get("sources") or {}).get(self.field.name)
        said = self.field.format(value) + (f" ({SOURCES[source]})" if source in SOURCES else "")
        self.hint.value = f'<span style="{MUTED}">in force: {_e(said)}</span>'

    def parts(self) -> list[widgets.Widget]:
        """Every widget of the row, for closing."""
        return [self.row, *self.row.children]


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
        self._conflict = widgets.HTML()
        self._reload = widgets.Button(
            description="Reload",
            tooltip="Show the saved policy; drops the edits made here",
            layout=widgets.Layout(display="none"),
        )
        self._base: dict[str, Any] = {}  # the saved policy the controls started from
        self._saved: dict[str, Any] = {}  # the saved policy as last read
        super().__init__(**kwargs)
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
            *(c.row for c in self._controls),
            widgets.HBox([self._save, self._remove]),
            widgets.HBox([self._conflict, self._reload]),
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
        try:
            edited = self.policy() != self._base
        except ValueError:
            edited = True  # half-typed input counts as an edit
        if edited and own != self.policy_or_none():
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

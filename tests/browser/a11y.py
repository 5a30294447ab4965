"""Keyboard and screen-reader checks for the browser tests: Tab order, focus, accessible names."""

from __future__ import annotations

import re
from typing import Any

# Roles a user operates; each needs an accessible name.
CONTROL_ROLES = (
    "button", "checkbox", "combobox", "link", "menuitem", "radio", "slider", "spinbutton",
    "switch", "tab", "textbox",
)  # fmt: skip
# `- button "Name"`, or quoted whole by YAML when the name has a quote: `- 'button "It''s"'`.
_ARIA_LINE = re.compile(r"^\s*- '?(?P<role>[a-z]+)(?P<name> \")?")

# Marks each control a keyboard user must reach under `root`, as `data-tfgpu-stop`: the enabled,
# visible ones, one radio per group (Tab reaches a group once; arrows move inside it). Returns
# each one's description, by mark.
_MARK_STOPS = """root => {
  const selector = 'button, input, select, textarea, summary, a[href], [tabindex]';
  const stops = {};
  const groups = new Set();
  let n = 0;
  for (const el of root.querySelectorAll(selector)) {
    if (el.disabled || el.closest('fieldset:disabled') || el.tabIndex < 0 ||
        !el.checkVisibility({ visibilityProperty: true })) {
      continue;
    }
    if (el.type === 'radio') {
      if (groups.has(el.name)) {
        continue;
      }
      groups.add(el.name);
    }
    const key = el.type === 'radio' ? `radio group ${el.name}` : `stop ${n++}`;
    el.dataset.tfgpuStop = key;
    stops[key] = `${el.tagName.toLowerCase()} ${el.getAttribute('aria-label') ||
      el.labels?.[0]?.textContent || el.textContent || el.id}`.trim().slice(0, 80);
  }
  return stops;
}"""

# Where the focus is: its stop mark (radios: their group), whether it is inside `root`, and
# whether the focus is drawn (an outline or a box shadow while it matches :focus-visible).
_FOCUSED = """root => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
  return {
    stop: el.type === 'radio' ? `radio group ${el.name}` : el.dataset.tfgpuStop ?? null,
    inside: root.contains(el),
    what: `${el.tagName.toLowerCase()} ${el.getAttribute('aria-label') || el.textContent}`
      .trim().slice(0, 80),
    visible: el.matches(':focus-visible') && (outline || style.boxShadow !== 'none')
  };
}"""


def unnamed_controls(snapshot: str) -> list[str]:
    """The lines of a Playwright aria snapshot that show a control without an accessible name."""
    missing = []
    for line in snapshot.splitlines():
        match = _ARIA_LINE.match(line)
        if match and match["role"] in CONTROL_ROLES and not match["name"]:
            missing.append(line.strip())
    return missing


def tab_through(page: Any, root: Any, limit: int = 80) -> tuple[dict[str, str], list[dict]]:
    """Press Tab from the first control under `root` until the focus leaves it.

    Returns the controls a keyboard user must reach (by mark, with a description) and, for
    each Tab stop on the way, where the focus was and whether it was drawn.
    """
    stops = root.evaluate(_MARK_STOPS)
    assert stops, "no control to reach"
    first = root.locator("[data-tfgpu-stop]").first
    # Focus it with the keyboard, as :focus-visible follows the keyboard: into it from the
    # control before, or back from the one after.
    first.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    visited = []
    handle = root.element_handle()
    for _ in range(limit):
        focused = page.evaluate(_FOCUSED, handle)
        if not focused["inside"]:
            break
        visited.append(focused)
        page.keyboard.press("Tab")
    return stops, visited

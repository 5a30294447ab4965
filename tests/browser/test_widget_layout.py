"""`GPUPanel` and `PolicyEditor` (ipywidgets) in JupyterLab, in Chromium: their layout from 480 to
1600 px of output width in the light and dark themes, and their keyboard and screen-reader access.

The layout is checked by facts measured in the DOM, not by comparing pictures: no value is split
over two lines, no separator stands alone, and the columns line up from one row to the next. The
screenshots are taken at both widths in both themes; `TFGPU_SCREENSHOTS=1` copies the ones the
user guide shows to docs/images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_tfgpu.in_kernel.policy_fields import policy_fields
from tests.browser.a11y import tab_through, unnamed_controls
from tests.browser.labserver import REPO, Console, Lab, open_lab, start_lab, wait_for_kernel

pytestmark = pytest.mark.browser

WIDGETS = (
    "import numpy as np\n"
    "from jupyter_tfgpu.widgets import GPUPanel, PolicyEditor\n"
    "block = np.ones(40 * 2**20 // 8)  # this kernel holds some memory on GPU 0\n"
    "display(GPUPanel())\n"
    "PolicyEditor()"
)
# Two GPUs, the second with a name too long for its column (shown whole in its tooltip).
GPUS = [
    {"name": "Simulated GPU 16GB", "memory_gb": 16},
    {"name": "Simulated A100-SXM4-80GB MIG 7g.80gb", "memory_gb": 80},
]
# The notebook's saved policy: the hints say where each value comes from.
POLICY = {"memory_growth": True, "memory_limit_mb": 4096, "devices": [0, 1]}
# The output widths checked (px): with the left sidebar open at 480, closed at 1600. And the width
# the layout was reported broken at: a 1400 px window with the sidebar open.
WIDTHS = {"480": (480, True), "1600": (1600, False), "window 1400": (None, True)}
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
# The screenshots the user guide shows (`TFGPU_SCREENSHOTS=1` copies them to docs/images).
DOC_IMAGES = ("widgets-1600-light.png", "widgets-480-dark.png")

SIZE = r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)"
# What must never be split over two lines.
VALUES = [
    rf"this kernel {SIZE}",
    rf"{SIZE} / {SIZE}",
    SIZE,
    r"\d+% busy",
    *(rf"GPU {n} {re.escape(gpu['name'])}" for n, gpu in enumerate(GPUS)),
    r"updated \d\d:\d\d:\d\d",
    r"GPUs \(simulated\)",
    r"in force: (?:not set|on|off|[\w.]+(?: MiB| GiB)?)",
    r"\((?:admin default|admin cap|this notebook)\)",
    *(re.escape(field.title) for field in policy_fields()),
]
SEPARATOR = r"^[·•|/]$"
GPU_COLUMNS = ["name", "utilization", "sparkline", "memory", "mine", "total"]

# Layout facts under `root`, for the patterns in `values`:
# - wrapped: values whose text lies on more than one line;
# - orphans: separators with no word beside them on their line (within 1.2 em);
# - rows: per row selector, the rows found, the left edge of each column (a selector: its first
#   visible element) in each row, and each row's columns' top and bottom edges.
_LAYOUT = r"""(root, [values, separator, rowSets]) => {
  const visible = r => r.width > 0 && r.height > 0;
  // Text nodes in order, each with the block it sits in; values never span two blocks.
  const texts = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const blockOf = node => {
    let el = node.parentElement;
    while (el && el !== root && getComputedStyle(el).display.startsWith('inline') &&
           getComputedStyle(el).display !== 'inline-block') {
      el = el.parentElement;
    }
    return el;
  };
  let joined = '';
  let lastBlock = null;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const block = blockOf(node);
    if (block !== lastBlock) {
      joined += '\n';
      lastBlock = block;
    }
    texts.push({ node, start: joined.length });
    joined += node.data;
  }
  const rectsOf = (start, end) => {
    const rects = [];
    for (const { node, start: at } of texts) {
      const from = Math.max(start, at), to = Math.min(end, at + node.data.length);
      if (from >= to) continue;
      const range = document.createRange();
      range.setStart(node, from - at);
      range.setEnd(node, to - at);
      rects.push(...Array.from(range.getClientRects()).filter(visible));
    }
    return rects;
  };
  const lines = rects => {
    const centres = [];
    for (const r of rects) {
      const c = r.top + r.height / 2;
      if (!centres.some(x => Math.abs(x - c) < r.height / 2)) centres.push(c);
    }
    return centres.length;
  };
  const wrapped = [];
  for (const source of values) {
    for (const m of joined.matchAll(new RegExp(source, 'g'))) {
      const rects = rectsOf(m.index, m.index + m[0].length);
      if (rects.length && lines(rects) > 1) wrapped.push(m[0]);
    }
  }
  const words = [];
  for (const { node } of texts) {
    for (const m of node.data.matchAll(/\S+/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const rect = Array.from(range.getClientRects()).find(visible);
      if (rect) {
        const em = parseFloat(getComputedStyle(node.parentElement).fontSize);
        words.push({ text: m[0], rect, em });
      }
    }
  }
  const sep = new RegExp(separator);
  const orphans = words.filter(w => sep.test(w.text)).filter(w => !words.some(o => {
    if (o === w || sep.test(o.text)) return false;
    const sameLine = Math.abs((o.rect.top + o.rect.bottom) / 2 - (w.rect.top + w.rect.bottom) / 2)
      < w.rect.height / 2;
    const gap = Math.max(o.rect.left - w.rect.right, w.rect.left - o.rect.right);
    return sameLine && gap <= 1.2 * w.em;
  })).map(w => `'${w.text}' at x=${Math.round(w.rect.left)}, y=${Math.round(w.rect.top)}`);
  const rows = {};
  for (const [rowSelector, columns] of rowSets) {
    const found = Array.from(root.querySelectorAll(rowSelector)).filter(
      r => visible(r.getBoundingClientRect()));
    const lefts = {};
    for (const [name, selector] of columns) {
      lefts[name] = found.map(row => {
        const el = Array.from(row.querySelectorAll(selector)).find(
          e => visible(e.getBoundingClientRect()));
        return el ? Math.round(el.getBoundingClientRect().left) : null;
      });
    }
    const tops = found.map(row => columns.map(([, selector]) => {
      const el = row.querySelector(selector);
      return el ? el.getBoundingClientRect() : null;
    }).filter(r => r && visible(r)));
    rows[rowSelector] = { count: found.length, lefts, tops: tops.map(rects => rects.map(
      r => ({ top: Math.round(r.top), bottom: Math.round(r.bottom) }))) };
  }
  return { wrapped, orphans, rows };
}"""


def _frames(page: Any) -> None:
    """Wait until the browser has laid out and painted (two animation frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _outputs(page: Any) -> Any:
    """The notebook's outputs: the GPUPanel, then the PolicyEditor."""
    return page.locator(".jp-Notebook .jp-Cell .jp-OutputArea-output")


def _set_width(page: Any, width: int | None, sidebar: bool) -> int:
    """Open or close the left sidebar and size the window so the outputs are `width` px wide
    (`width` None: a 1400 px window); the outputs' width."""
    page.evaluate(
        "open => open ? window.jupyterapp.shell.expandLeft() : window.jupyterapp.shell.collapseLeft()",
        sidebar,
    )
    height = page.viewport_size["height"]
    if width is None:
        page.set_viewport_size({"width": 1400, "height": height})
    for _ in range(4):
        _frames(page)
        now = round(_outputs(page).first.bounding_box()["width"])
        if width is None or abs(now - width) <= 1:
            return now
        page.set_viewport_size(
            {"width": page.viewport_size["width"] + width - now, "height": height}
        )
    raise AssertionError(f"the outputs are {now} px wide, not {width} px")


def _set_theme(page: Any, theme: str) -> None:
    """Switch JupyterLab's theme and wait until the page is drawn in it."""
    page.evaluate(
        "t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme
    )
    page.wait_for_function(
        """t => document.body.dataset.jpThemeName === t && document.body.dataset.jpThemeLight ===
             String(!t.includes('Dark')) && (() => {
               const [r, g, b] = getComputedStyle(document.body).backgroundColor
                 .match(/\\d+/g).map(Number);
               return (r + g + b > 384) === !t.includes('Dark');
             })()""",
        arg=theme,
    )
    _frames(page)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One simulated-GPU lab server for the module."""
    yield from start_lab(
        tmp_path_factory, "simulated", f"--TFGPU.simulated_gpus={json.dumps(GPUS)}"
    )


@pytest.fixture(scope="module")
def widgets_page(browser: Any, lab: Lab) -> Iterator[Any]:
    """JupyterLab with a notebook whose cells show a GPUPanel and a PolicyEditor, both run."""
    console = Console()
    lab.notebook("widgets.ipynb", WIDGETS)
    lab.api("PUT", "tfgpu/api/policies/widgets.ipynb", POLICY)
    page = open_lab(browser, lab, console, "lab/tree/widgets.ipynb")
    page.set_viewport_size({"width": 1400, "height": 1300})
    wait_for_kernel(page)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    outputs = _outputs(page)
    outputs.nth(0).get_by_text(re.compile(r"this kernel [1-9]")).first.wait_for(timeout=60_000)
    outputs.nth(1).get_by_text("in force:").first.wait_for(timeout=30_000)
    yield page
    page.context.close()
    assert console.errors == []


def _layout(output: Any, rows: list) -> dict:
    """The layout facts of one widget's output (see _LAYOUT)."""
    return output.evaluate(_LAYOUT, [VALUES, SEPARATOR, rows])


def test_widgets_keep_values_whole_and_columns_aligned_from_480_to_1600_px(
    widgets_page: Any, tmp_path: Path
) -> None:
    page = widgets_page
    panel, editor = _outputs(page).nth(0), _outputs(page).nth(1)
    gpu_rows = [".tfgpu-GpuRow", [(c, f'[data-tfgpu-col="{c}"]') for c in GPU_COLUMNS]]
    policy_rows = [
        ".tfgpu-PolicyRow",
        [("control", "select, input[type=text]"), ("hint", '[data-tfgpu-col="hint"]')],
    ]
    for theme, theme_name in THEMES.items():
        _set_theme(page, theme_name)
        for label, (width, sidebar) in WIDTHS.items():
            # Given the widgets at this output width and theme
            wide = _set_width(page, width, sidebar)
            where = f"{label} ({wide} px of output, {theme} theme)"
            # Then no value is split over two lines, and no separator stands alone
            facts = _layout(panel, [gpu_rows])
            edits = _layout(editor, [policy_rows])
            assert facts["wrapped"] + edits["wrapped"] == [], f"values wrapped at {where}"
            assert facts["orphans"] + edits["orphans"] == [], f"lone separators at {where}"
            # And the GPU rows' columns and the policy form's columns line up
            gpus = facts["rows"][gpu_rows[0]]
            assert gpus["count"] == 2, where
            for column, lefts in gpus["lefts"].items():
                assert None not in lefts and max(lefts) - min(lefts) <= 1, (where, column, lefts)
            fields = edits["rows"][policy_rows[0]]
            assert fields["count"] == len(policy_fields()), where
            for column, lefts in fields["lefts"].items():
                assert None not in lefts and max(lefts) - min(lefts) <= 1, (where, column, lefts)
            # And a GPU's name stands over its bars at 480 px, beside them on one line at 1600
            for parts in gpus["tops"]:
                gpu, *bars = parts
                if label == "480":
                    assert all(gpu["bottom"] <= bar["top"] for bar in bars), (where, parts)
                if label == "1600":
                    assert all(bar["top"] < gpu["bottom"] for bar in bars), (where, parts)
            if label in ("480", "1600"):
                _screenshot(page, tmp_path / f"widgets-{label}-{theme}.png")
    # And a name too long for its column is cut with an ellipsis, and whole in its tooltip
    name = panel.locator('[data-tfgpu-col="name"]').nth(1)
    assert name.get_attribute("title") == f"GPU 1 {GPUS[1]['name']}"
    assert name.evaluate(
        "e => e.scrollWidth > e.clientWidth && getComputedStyle(e).textOverflow === 'ellipsis'"
    )
    if os.environ.get("TFGPU_SCREENSHOTS"):
        for image in DOC_IMAGES:
            shutil.copyfile(tmp_path / image, REPO / "docs" / "images" / image)


def _screenshot(page: Any, path: Path) -> None:
    """Both widgets, the window made tall enough to show them whole."""
    area = page.locator(".jp-Notebook .jp-Cell-outputArea").first
    hidden = area.evaluate(
        "a => a.getBoundingClientRect().bottom - a.closest('.jp-WindowedPanel-outer')"
        ".getBoundingClientRect().bottom"
    )
    if hidden > -16:
        size = page.viewport_size
        page.set_viewport_size({**size, "height": size["height"] + round(hidden) + 32})
        _frames(page)
    area.screenshot(path=str(path), animations="disabled")
    assert path.stat().st_size > 10_000


def test_every_widget_control_is_reached_by_tab_named_and_shows_focus(
    widgets_page: Any, lab: Lab
) -> None:
    page = widgets_page
    _set_theme(page, THEMES["light"])
    _set_width(page, 1600, False)
    panel, editor = _outputs(page).nth(0), _outputs(page).nth(1)
    # Given the form with an unsaved edit while the notebook's policy is saved elsewhere, so
    # that every control shows, the notice's Reload button too
    editor.get_by_role("textbox", name="Memory limit (MiB)").fill("3GiB")
    lab.api("PUT", "tfgpu/api/policies/widgets.ipynb", {**POLICY, "memory_growth": False})
    reload = editor.get_by_role("button", name="Reload")
    reload.wait_for(timeout=15_000)

    # Then a screen reader hears each GPU's bars by name, and a name for every control
    bars = panel.aria_snapshot()
    for name in ("GPU 0 utilization", "GPU 0 memory", "GPU 1 utilization", "GPU 1 memory"):
        assert f'"{name}' in bars, bars
    form = editor.aria_snapshot()
    assert unnamed_controls(form) == [], form
    for field in policy_fields():
        assert f'"{field.title}"' in form, (field.title, form)
    for name in ("GPU 0", "GPU 1", "Save", "Remove policy", "Reload"):
        assert f'"{name}"' in form, (name, form)

    # When a keyboard user tabs through the form
    stops, visited = tab_through(page, editor)
    # Then Tab reaches every control once, in order, each with its focus drawn
    assert [v["stop"] for v in visited] == list(stops), (stops, visited)
    assert "button Reload" in stops.values(), stops
    assert [v["what"] for v in visited if not v["visible"]] == []

    # And Reload drops the edit, and the notice and its button go
    reload.click()
    reload.wait_for(state="hidden")
    lab.api("PUT", "tfgpu/api/policies/widgets.ipynb", POLICY)

"""Keyboard and screen readers in JupyterLab: every control of the GPU panel and the status bar
item is reached by Tab, named, and shows its focus."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.a11y import tab_through, unnamed_controls
from tests.browser.labserver import (
    Lab,
    open_lab,
    open_panel,
    run_first_cell,
    start_lab,
    wait_for_kernel,
)

pytestmark = pytest.mark.browser

ALLOCATE = "import numpy as np\nblock = np.ones(64 * 2**20 // 8)\nprint('allocated')"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One simulated-GPU lab server for the module; a memory cap gives the form an admin hint."""
    yield from start_lab(tmp_path_factory, "simulated", "--TFGPU.max_memory_mb=8192")


def test_every_panel_control_is_reached_by_tab_named_and_shows_focus(
    browser: Any, lab: Lab, console: Any
) -> None:
    # Given the panel with every kind of control: a notebook holding GPU memory (its link and
    # kernel buttons) and that notebook's policy form with its extra settings open
    lab.notebook("keys.ipynb", ALLOCATE)
    page = open_lab(browser, lab, console, "lab/tree/keys.ipynb")
    wait_for_kernel(page)
    run_first_cell(page)
    panel = open_panel(page)
    panel.get_by_role("button", name="Interrupt the kernel (keys.ipynb)").wait_for(timeout=30_000)
    panel.get_by_role("heading", name="GPU policy of keys.ipynb").wait_for()
    panel.locator(".jp-tfgpu-More summary").click()

    # Then a screen reader has a name for every control
    snapshot = panel.aria_snapshot()
    assert unnamed_controls(snapshot) == [], snapshot
    for name in (
        "Open keys.ipynb",
        "Restart the kernel (keys.ipynb)",
        "Shut down the kernel (keys.ipynb)",
        "Memory limit (MiB)",
    ):
        assert f'"{name}"' in snapshot, snapshot
    assert '- region "GPU panel"' in page.locator("#jp-tfgpu-panel").aria_snapshot(depth=1)
    # And the admin's hint beside a field is read with its control, and with the memory
    # limit how the running kernel's cap is held (the admin's cap: cooperative)
    expect(panel.get_by_label("Memory limit (MiB)")).to_have_accessible_description(
        re.compile(r"^Admin cap: 8192 MiB Cooperative cap, held by the framework settings")
    )
    # And its row's link is read with the same sentence, the tag's tooltip
    tag = panel.locator(".jp-tfgpu-Holder .jp-tfgpu-Enforcement")
    expect(tag.locator("[aria-hidden]")).to_have_text("cooperative")
    expect(panel.get_by_role("button", name="Open keys.ipynb")).to_have_accessible_description(
        tag.get_attribute("title")
    )

    # When a keyboard user tabs through the panel
    stops, visited = tab_through(page, panel)
    # Then Tab reaches every control once, each with its focus drawn (the set, not the order:
    # the kernels' rows may change places as their memory changes)
    assert sorted(v["stop"] or v["what"] for v in visited) == sorted(stops), (stops, visited)
    assert [v["what"] for v in visited if not v["visible"]] == []
    page.context.close()
    assert console.errors == []


def test_status_bar_item_is_a_named_button_whose_tooltip_says_what_it_shows(
    browser: Any, lab: Lab, console: Any
) -> None:
    # Given JupyterLab with no notebook open
    page = open_lab(browser, lab, console)
    item = page.locator(".jp-tfgpu-StatusItem")
    page.wait_for_function(
        "() => /GPU 1 /.test(document.querySelector('.jp-tfgpu-StatusItem').title)"
    )
    # Then it is a button whose name starts with what it shows and says what that is
    text = item.inner_text().splitlines()[0]
    name = item.get_attribute("aria-label")
    assert name.startswith(f"{text}. No notebook with a running kernel: this shows the GPU")
    assert page.get_by_role("button", name=name, exact=True).count() == 1
    assert item.get_attribute("title").startswith(
        "No notebook with a running kernel: this shows the GPU memory of the current notebook's"
    )
    # And the keyboard reaches it with its focus drawn, and Enter opens the panel
    stops, visited = tab_through(page, page.locator("#jp-main-statusbar"))
    status_item = [v for v in visited if v["what"].startswith(f"div {text}")]
    assert status_item and status_item[0]["visible"], visited
    item.focus()
    page.keyboard.press("Enter")
    page.locator("#jp-tfgpu-panel").wait_for(state="visible")
    page.context.close()
    assert console.errors == []

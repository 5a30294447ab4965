"""The GPU panel, the toolbar item and the notifications in Notebook 7 (`jupyter notebook`),
which has no status bar: against `jupyter notebook --TFGPU.backend=simulated`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.a11y import tab_through, unnamed_controls
from tests.browser.labserver import (
    Console,
    Lab,
    mib,
    open_lab,
    run_first_cell,
    start_lab,
    wait_for_kernel,
)

pytestmark = pytest.mark.browser

ALLOCATE = (
    "import numpy as np\n"
    "block = np.ones(300 * 2**20 // 8)  # ~300 MiB, touched so it is resident\n"
    "print('allocated', block.nbytes >> 20, 'MiB')"
)
# Notebook 7 throws this while it loads its settings, with this extension disabled too.
NOTEBOOK_OWN_ERROR = re.compile(
    r"^uncaught: Cannot read properties of undefined \(reading 'schema'\)$"
)
ITEM = ".jp-NotebookPanel-toolbar .jp-tfgpu-ToolbarItem"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One simulated-GPU `jupyter notebook` server for the module; its enforcement only warns."""
    yield from start_lab(
        tmp_path_factory,
        "simulated",
        "--TFGPU.enforcement=warn",
        "--TFGPU.enforcement_grace=0",
        app="notebook",
    )


def open_notebook(browser: Any, server: Lab, console: Console, name: str, *cells: str) -> Any:
    """Notebook 7's page of a new notebook, once its kernel is idle."""
    server.notebook(name, *cells)
    page = open_lab(
        browser, server, console, f"notebooks/{name}", ready=".jp-NotebookPanel-toolbar"
    )
    wait_for_kernel(page)
    return page


def errors(console: Console) -> list[str]:
    """The page's errors, less the one Notebook 7 throws by itself."""
    return [e for e in console.errors if not NOTEBOOK_OWN_ERROR.match(e)]


def wait_for_memory(page: Any, at_least_mib: float) -> None:
    """Wait until the toolbar item shows at least that much memory."""
    page.wait_for_function(
        """([selector, least]) => {
          const t = document.querySelector(selector + ' .jp-tfgpu-StatusItem-text').textContent;
          // `GPU: 1.2 GiB`, or `GPU: 300.0 / 256.0 MiB limit` (both in the limit's unit)
          const [, n, unit] = t.match(/^GPU: ([\\d.]+)(?: \\/ [\\d.]+)? (MiB|GiB)/) || [];
          return n && Number(n) * (unit === 'GiB' ? 1024 : 1) >= least;
        }""",
        arg=[ITEM, at_least_mib],
        timeout=30_000,
    )


def test_toolbar_item_shows_the_kernels_memory_and_opens_the_panel(
    browser: Any, server: Lab, console: Console
) -> None:
    # Given a notebook whose cell allocates about 300 MiB with numpy
    page = open_notebook(browser, server, console, "share.ipynb", ALLOCATE)
    item = page.locator(ITEM)
    item.wait_for()
    panel = page.locator("#jp-tfgpu-panel")
    assert not panel.is_visible()
    # When the user runs it
    run_first_cell(page)
    page.locator(".jp-OutputArea-output", has_text="allocated 300 MiB").wait_for(timeout=60_000)
    # Then the notebook's toolbar shows the memory its kernel holds, and says what it is
    wait_for_memory(page, 300)
    text = item.locator(".jp-tfgpu-StatusItem-text").inner_text()
    assert mib(text) >= 300
    tooltip = item.get_attribute("title")
    assert tooltip.startswith("This notebook's kernel holds "), tooltip
    assert "GPU 0 Simulated GPU 16GB" in tooltip and "GPU 1 Simulated GPU 16GB" in tooltip
    assert item.get_attribute("aria-label").startswith(f"{text}. This notebook's kernel holds")
    # When the user clicks it
    item.click()
    # Then the GPU panel opens in the right sidebar, with that notebook's memory
    panel.wait_for(state="visible")
    assert page.locator("#jp-right-stack #jp-tfgpu-panel").count() == 1
    holder = panel.locator(".jp-tfgpu-Holder", has=page.locator("button", has_text="share.ipynb"))
    holder.wait_for(timeout=15_000)
    assert mib(holder.locator(".jp-tfgpu-Holder-head > span").inner_text()) >= 300
    # And its row says how its cap is enforced (it has none), why in the tag's tooltip
    tag = holder.locator(".jp-tfgpu-Enforcement")
    assert tag.locator("[aria-hidden]").inner_text() == "no cap"
    assert tag.get_attribute("title").startswith("No cap: ")
    page.context.close()
    assert errors(console) == []


def test_view_menu_and_command_open_the_panel(browser: Any, server: Lab, console: Console) -> None:
    # Given a notebook, the GPU panel closed
    page = open_notebook(browser, server, console, "menu.ipynb", "x = 1")
    panel = page.locator("#jp-tfgpu-panel")
    assert not panel.is_visible()
    # When the user picks View > GPU Panel
    page.locator(".lm-MenuBar-itemLabel", has_text="View").click()
    page.get_by_role("menuitem", name="GPU Panel", exact=True).click()
    # Then the panel opens, and its close button closes it
    panel.wait_for(state="visible")
    page.get_by_title("Collapse right side panel").click()
    panel.wait_for(state="hidden")
    # When the user runs the command from the command palette
    page.locator(".lm-MenuBar-itemLabel", has_text="View").click()
    page.get_by_role("menuitem", name=re.compile("^Activate Command Palette")).click()
    page.locator(".lm-CommandPalette-input").fill("GPU Panel")
    page.locator(".lm-CommandPalette-item", has_text="Show the GPU Panel").click()
    # Then the panel opens again
    panel.wait_for(state="visible")
    # And the command, as another extension would run it, opens it after a close too
    page.get_by_title("Collapse right side panel").click()
    panel.wait_for(state="hidden")
    page.evaluate("() => window.jupyterapp.commands.execute('tfgpu:open')")
    panel.wait_for(state="visible")
    page.context.close()
    assert errors(console) == []


def test_notifications_near_and_over_the_memory_limit(
    browser: Any, server: Lab, console: Console
) -> None:
    # Given a notebook whose policy limits its kernel to 256 MiB per GPU
    server.api("PUT", "tfgpu/api/policies/capped7.ipynb", {"memory_limit_mb": 256})
    page = open_notebook(browser, server, console, "capped7.ipynb", ALLOCATE)
    kernel_id = wait_for_kernel(page)
    # When its cell allocates about 300 MiB
    run_first_cell(page)
    # Then the toolbar item shows the limit, and Notebook 7 notifies as JupyterLab does: near the
    # limit, and when the server warns
    wait_for_memory(page, 256)
    assert page.locator(ITEM).inner_text().splitlines()[0].endswith(" / 256.0 MiB limit")
    page.get_by_text("of its 256.0 MiB GPU memory limit").wait_for(timeout=30_000)
    page.get_by_text(
        re.compile(r"capped7\.ipynb held \d+ MiB on a GPU, over its cap of 256 MiB")
    ).wait_for(timeout=30_000)
    # And the notification's button opens the GPU panel
    page.get_by_role("button", name="GPU panel").first.click()
    page.locator("#jp-tfgpu-panel").wait_for(state="visible")
    page.context.close()
    server.api("DELETE", f"api/kernels/{kernel_id}")
    assert errors(console) == []


def test_keyboard_reaches_the_toolbar_item_and_the_panel(
    browser: Any, server: Lab, console: Console
) -> None:
    # Given a notebook in Notebook 7
    page = open_notebook(browser, server, console, "keys7.ipynb", "x = 1")
    item = page.locator(ITEM)
    item.wait_for()
    # Then the toolbar's Tab stops include the GPU item, named, with its focus drawn
    toolbar = page.locator(".jp-NotebookPanel-toolbar")
    assert unnamed_controls(toolbar.aria_snapshot()) == []
    _, visited = tab_through(page, toolbar)
    gpu = [v for v in visited if v["what"].startswith("div GPU: ")]
    assert gpu and gpu[0]["visible"], visited
    # When the user presses Enter on it
    item.focus()
    page.keyboard.press("Enter")
    # Then the panel opens, and Tab reaches each of its controls, named, focus drawn
    panel = page.locator("#jp-tfgpu-panel")
    panel.wait_for(state="visible")
    panel.get_by_role("heading", name="GPU policy of keys7.ipynb").wait_for()
    panel.get_by_role("button", name="Open keys7.ipynb").wait_for(timeout=30_000)
    snapshot = panel.aria_snapshot()
    assert unnamed_controls(snapshot) == [], snapshot
    stops, visited = tab_through(page, panel)
    # (the kernels' rows may change places as their memory changes: the set, not the order)
    assert sorted(v["stop"] or v["what"] for v in visited) == sorted(stops), (stops, visited)
    assert [v["what"] for v in visited if not v["visible"]] == []
    page.context.close()
    assert errors(console) == []

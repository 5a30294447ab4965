"""The GPU panel, status bar item and policy form against `jupyter lab --TFGPU.backend=simulated`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.labserver import (
    REPO,
    VIEWPORT,
    Lab,
    mib,
    open_lab,
    open_panel,
    run_first_cell,
    start_lab,
    wait_for_kernel,
)

pytestmark = pytest.mark.browser

NO_CAP = "No cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb."
ALLOCATE = (
    "import numpy as np\n"
    "block = np.ones(300 * 2**20 // 8)  # ~300 MiB, touched so it is resident\n"
    "print('allocated', block.nbytes >> 20, 'MiB')"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One simulated-GPU lab server for the module; the admin's enforcement only warns."""
    yield from start_lab(
        tmp_path_factory, "simulated", "--TFGPU.enforcement=warn", "--TFGPU.enforcement_grace=0"
    )


@pytest.fixture
def page(browser: Any, lab: Lab, console: Any) -> Iterator[Any]:
    """JupyterLab in a fresh browser context; the test fails on any console error."""
    page = open_lab(browser, lab, console)
    yield page
    page.context.close()
    assert console.errors == []


def open_notebook(browser: Any, lab: Lab, console: Any, name: str, *cells: str) -> Any:
    """JupyterLab with a new notebook open and its kernel idle."""
    lab.notebook(name, *cells)
    page = open_lab(browser, lab, console, f"lab/tree/{name}")
    wait_for_kernel(page)
    return page


def test_panel_lists_the_simulated_gpus_with_history(page: Any, lab: Lab) -> None:
    # Given the simulated backend's two GPUs
    # When the user opens the GPU panel
    panel = open_panel(page)
    # Then each GPU has a labelled card with figures and a live sparkline
    cards = panel.locator(".jp-tfgpu-Gpu")
    cards.first.wait_for()
    assert cards.count() == 2
    for index in range(2):
        card = cards.nth(index)
        assert card.locator(".jp-tfgpu-Gpu-index").inner_text() == f"GPU {index}"
        assert card.locator(".jp-tfgpu-Gpu-name").inner_text() == "Simulated GPU 16GB"
        assert card.locator(".jp-tfgpu-mod-simulated").is_visible()
        assert re.fullmatch(r"\d+%", card.locator(".jp-tfgpu-Metric-value").nth(0).inner_text())
        assert card.locator(".jp-tfgpu-Metric-value").nth(1).inner_text().endswith("/ 16.0 GiB")
    assert panel.locator(".jp-tfgpu-Connection").inner_text() == "live"

    # When the page is reloaded once the server has some history
    while len(lab.api("GET", "tfgpu/api/gpus/history?seconds=60")["timestamps"]) < 20:
        page.wait_for_timeout(250)
    page.reload()
    page.wait_for_function("() => !!window.jupyterapp")
    page.evaluate("() => window.jupyterapp.restored")
    panel = page.locator("#jp-tfgpu-panel")
    if not panel.is_visible():
        panel = open_panel(page)
    # Then the sparklines show that history at once, not only what arrived since
    page.wait_for_function(
        """() => {
          const line = document.querySelector('#jp-tfgpu-panel .jp-tfgpu-mod-utilization polyline');
          return !!line && line.getAttribute('points').split(' ').length >= 15;
        }""",
        timeout=3_000,
    )


def test_notebook_memory_shows_under_that_notebook(browser: Any, lab: Lab, console: Any) -> None:
    # Given a notebook whose cell allocates about 300 MiB with numpy
    page = open_notebook(browser, lab, console, "alloc.ipynb", ALLOCATE)
    # When the user runs it and opens the panel
    run_first_cell(page)
    page.locator(".jp-OutputArea-output", has_text="allocated 300 MiB").wait_for(timeout=60_000)
    panel = open_panel(page)
    # Then the memory shows under that notebook, with its kernel's buttons
    holder = panel.locator(".jp-tfgpu-Holder", has=page.locator("button", has_text="alloc.ipynb"))
    holder.wait_for(timeout=15_000)
    memory = holder.locator(".jp-tfgpu-Holder-head > span")
    page.wait_for_function(
        """m => { const [, n, unit] = m.textContent.match(/([\\d.]+) (MiB|GiB)/) || [];
                 return n && Number(n) * (unit === 'GiB' ? 1024 : 1) >= 300; }""",
        arg=memory.element_handle(),
        timeout=15_000,
    )
    assert mib(memory.inner_text()) >= 300
    for label in ("Interrupt the kernel", "Restart the kernel", "Shut down the kernel"):
        assert holder.locator(f'button[title="{label}"]').is_visible()
    # And its row says it has no cap, why in the tag's tooltip and read with the notebook's link
    tag = holder.locator(".jp-tfgpu-Enforcement")
    expect(tag.locator("[aria-hidden]")).to_have_text("no cap")
    assert tag.get_attribute("title") == NO_CAP
    expect(holder.get_by_role("button", name="Open alloc.ipynb")).to_have_accessible_description(
        NO_CAP
    )
    # And the status bar shows the memory that notebook's kernel holds, the GPUs' totals in
    # its tooltip
    item = page.locator(".jp-tfgpu-StatusItem")
    page.wait_for_function(
        """() => { const t = document.querySelector('.jp-tfgpu-StatusItem-text').textContent;
                   const [, n, unit] = t.match(/^GPU: ([\\d.]+) (MiB|GiB)$/) || [];
                   return n && Number(n) * (unit === 'GiB' ? 1024 : 1) >= 300; }""",
        timeout=15_000,
    )
    assert mib(item.locator(".jp-tfgpu-StatusItem-text").inner_text()) >= 300
    tooltip = item.get_attribute("title")
    assert tooltip.startswith("This notebook's kernel holds "), tooltip
    assert "GPU 0 Simulated GPU 16GB" in tooltip and "GPU 1 Simulated GPU 16GB" in tooltip
    # And that it has no cap, and why
    first, second = tooltip.splitlines()[:2]
    assert first.endswith("; it has no cap."), tooltip
    assert second == NO_CAP, tooltip
    page.context.close()
    assert console.errors == []


def test_policy_from_the_panel_needs_a_restart_then_applies(
    browser: Any, lab: Lab, console: Any
) -> None:
    # Given an open notebook with a running kernel
    page = open_notebook(browser, lab, console, "policy.ipynb", "x = 1")
    kernel_id = wait_for_kernel(page)
    panel = open_panel(page)
    panel.get_by_role("heading", name="GPU policy of policy.ipynb").wait_for()
    limit = panel.locator("#jp-tfgpu-field-memory_limit_mb")
    # (it runs with no cap, and the policy section says so)
    cap = panel.locator(".jp-tfgpu-Cap")
    expect(cap.locator(".jp-tfgpu-Enforcement [aria-hidden]")).to_have_text("no cap")
    # (and the running kernel's tag, not the server's line, describes the memory limit)
    expect(panel.locator(".jp-tfgpu-Held")).to_have_count(0)

    # When the user saves a value the server refuses, the server's words are shown
    console.expect(r"status of 400 \(invalid memory_limit_mb\)")
    limit.fill("0")
    panel.get_by_role("button", name="Save").click()
    error = panel.locator(".jp-tfgpu-Error")
    error.wait_for()
    assert "memory_limit_mb" in error.inner_text()

    # When the user saves a 1024 MiB limit
    limit.fill("1024")
    panel.get_by_role("button", name="Save").click()
    # Then the panel says the running kernel needs a restart
    banner = panel.locator(".jp-tfgpu-Banner")
    banner.wait_for(timeout=15_000)
    assert "Restart" in banner.inner_text()
    assert error.count() == 0
    assert limit.input_value() == "1024"

    # When the user restarts from the banner and confirms
    # (JupyterLab's debugger logs this when a restart cancels its start-up request)
    console.expect(r"Could not restore the debugger state: Canceled future")
    banner.get_by_role("button", name="Restart kernel").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Restart").click()
    # Then the banner goes and the kernel runs with the policy
    banner.wait_for(state="detached", timeout=30_000)
    panel.locator(".jp-tfgpu-Ok").wait_for()
    kernel = lab.api("GET", f"tfgpu/api/kernels/{kernel_id}")
    assert kernel["applied"]["memory_limit_mb"] == 1024
    assert kernel["restart_required"] is False
    # And the policy section says its cap is cooperative, held by the framework settings, and
    # why that is not hard, also to a screen reader on the memory limit's control
    expect(cap).to_have_text(re.compile(r"^Running kernel: cap 1\.0 GiB per GPU.* Enforcement: "))
    expect(cap.locator(".jp-tfgpu-Enforcement [aria-hidden]")).to_have_text("cooperative")
    held = re.compile(
        r"Cooperative cap, held by the framework settings \(TensorFlow, PyTorch, JAX\)\. Not a "
        r"hard cap: .*code in the kernel can undo them"
    )
    expect(cap.locator(".jp-tfgpu-Enforcement")).to_have_attribute("title", held)
    expect(limit).to_have_accessible_description(held)

    # When the notebook's kernel is shut down, once no request to it is in flight (JupyterLab
    # throws a request that a shutdown cancels, such as a comm's subshell, uncaught)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel._futures.size"
        " === 0",
        timeout=30_000,
    )
    page.get_by_role("menuitem", name="Kernel").click()
    # (JupyterLab's Kernel menu shuts it down without asking)
    page.get_by_role("menuitem", name=re.compile(r"^Shut Down Kernel")).click()
    # Then the memory limit says how this server would hold it (GET status: hard caps off; the
    # enforcer warns at once), never a hard cap, also to a screen reader
    would = (
        "On this server a memory limit is cooperative: the kernel's framework settings hold it "
        "(past it, the enforcer warns)."
    )
    expect(panel.locator(".jp-tfgpu-Held")).to_have_text(would, timeout=30_000)
    expect(limit).to_have_accessible_description(re.compile(re.escape(would)))
    expect(cap).to_have_count(0)
    page.context.close()
    assert console.errors == []


def test_status_bar_item_shows_numbers_and_opens_the_panel(page: Any) -> None:
    # Given JupyterLab with no notebook open
    item = page.locator(".jp-tfgpu-StatusItem")
    # Then the status bar item has no notebook kernel to show, and both GPUs' figures in its
    # tooltip
    page.wait_for_function(
        "() => /GPU 1 /.test(document.querySelector('.jp-tfgpu-StatusItem').title)"
    )
    assert item.locator(".jp-tfgpu-StatusItem-text").inner_text() == "GPU: \u2013"
    tooltip = item.get_attribute("title")
    for index in (0, 1):
        assert re.search(
            rf"GPU {index} Simulated GPU 16GB: \d+% busy, memory [\d.]+ / 16\.0 GiB", tooltip
        )
    assert item.locator(".jp-tfgpu-mod-simulated").is_visible()
    # When the user focuses it with the keyboard and presses Enter, the panel opens
    item.focus()
    page.keyboard.press("Enter")
    page.locator("#jp-tfgpu-panel").wait_for(state="visible")


def test_notifications_near_and_over_the_memory_limit(browser: Any, lab: Lab, console: Any) -> None:
    # Given a notebook whose policy limits its kernel to 256 MiB per GPU
    lab.api("PUT", "tfgpu/api/policies/capped.ipynb", {"memory_limit_mb": 256})
    page = open_notebook(browser, lab, console, "capped.ipynb", ALLOCATE)
    kernel_id = wait_for_kernel(page)
    # When its cell allocates about 300 MiB
    run_first_cell(page)
    # Then JupyterLab notifies its owner as it nears the limit, and when the server warns
    page.get_by_text("of its 256.0 MiB GPU memory limit").wait_for(timeout=30_000)
    page.get_by_text(
        re.compile(r"capped\.ipynb held \d+ MiB on a GPU, over its cap of 256 MiB")
    ).wait_for(timeout=30_000)
    page.context.close()
    lab.api("DELETE", f"api/kernels/{kernel_id}")
    assert console.errors == []


def test_screenshots_light_and_dark(browser: Any, lab: Lab, console: Any, tmp_path: Path) -> None:
    """The README's screenshots; `TFGPU_SCREENSHOTS=1` writes them to docs/images."""
    # Given a notebook with a policy, holding memory and computing (what a new user sees first)
    lab.api(
        "PUT", "tfgpu/api/policies/train.ipynb", {"memory_growth": True, "memory_limit_mb": 4096}
    )
    settings = {"raw": json.dumps({"historySeconds": 60})}
    lab.api("PUT", "lab/api/settings/jupyter-tfgpu:plugin", settings)
    busy = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    page = open_notebook(browser, lab, console, "train.ipynb", ALLOCATE + "\n" + busy)
    run_first_cell(page)
    panel = open_panel(page)
    panel.locator(".jp-tfgpu-Holder-name", has_text="train.ipynb").wait_for(timeout=30_000)
    page.locator(".jp-OutputArea-output", has_text="allocated").wait_for(timeout=60_000)
    # The user setting reached the sparklines
    label = panel.locator(".jp-tfgpu-Sparkline").first.get_attribute("aria-label")
    assert label == "Utilization over the last 60 seconds"
    page.wait_for_timeout(8_000)  # the busy loop shows on the utilization sparkline
    # Tall enough that the whole panel shows without scrolling
    body = panel.locator(".jp-tfgpu-Panel-body")
    height = body.evaluate("b => b.scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height + 120})
    images = REPO / "docs" / "images" if os.environ.get("TFGPU_SCREENSHOTS") else tmp_path
    for theme, name in (
        ("JupyterLab Light", "panel-light.png"),
        ("JupyterLab Dark", "panel-dark.png"),
    ):
        page.evaluate(
            "t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme
        )
        page.wait_for_function("t => document.body.dataset.jpThemeName === t", arg=theme)
        page.wait_for_timeout(500)
        body.screenshot(path=str(images / name), animations="disabled")
        assert (images / name).stat().st_size > 10_000
    page.context.close()
    assert console.errors == []

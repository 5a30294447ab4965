"""Every view agrees, live: a policy saved anywhere shows in open sidebars without a reload."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.labserver import Lab, open_lab, open_panel, run_first_cell, start_lab, wait_for_kernel

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from start_lab(tmp_path_factory, "simulated")


def notebook_page(browser: Any, lab: Lab, console: Any, name: str) -> tuple[Any, Any]:
    """JupyterLab on the notebook with its kernel idle, the GPU panel open, and a marker that a
    reload would lose."""
    page = open_lab(browser, lab, console, f"lab/tree/{name}")
    wait_for_kernel(page)
    panel = open_panel(page)
    panel.get_by_role("heading", name=f"GPU policy of {name}").wait_for()
    page.evaluate("() => { window.tfgpuNotReloaded = true; }")
    return page, panel


def not_reloaded(page: Any) -> bool:
    return page.evaluate("() => window.tfgpuNotReloaded === true")


def test_a_policy_set_by_the_magic_shows_in_the_sidebar(browser: Any, lab: Lab, console: Any) -> None:
    """%tfgpu policy in a cell: the sidebar's form beside it shows the new policy."""
    # Given a notebook whose first cell sets a policy, and its sidebar form showing none
    lab.notebook("magic.ipynb", "%tfgpu policy --growth --limit 2GiB --devices 0")
    page, panel = notebook_page(browser, lab, console, "magic.ipynb")
    limit = panel.locator("#jp-tfgpu-field-memory_limit_mb")
    growth = panel.locator("#jp-tfgpu-field-memory_growth")
    expect(limit).to_have_value("")

    # When the user runs the cell
    run_first_cell(page)

    # Then the form shows the saved policy, and the page was not reloaded
    expect(limit).to_have_value("2048", timeout=15_000)
    expect(growth).to_have_value("true")
    assert not_reloaded(page)
    page.context.close()
    assert console.errors == []


def test_a_rest_change_reaches_another_tab_and_spares_unsaved_edits(
    browser: Any, lab: Lab, console: Any
) -> None:
    """A REST write shows in a second tab at once; a tab with unsaved edits keeps them and says
    the policy changed elsewhere, with Reload."""
    # Given two tabs on the same notebook, and unsaved edits in the first
    # (two JupyterLab tabs on one kernel: each logs the comms the other's widget manager opens)
    console.expect(r"Comm not found for comm id")
    lab.notebook("shared.ipynb", "x = 1")
    first, first_panel = notebook_page(browser, lab, console, "shared.ipynb")
    second, second_panel = notebook_page(browser, lab, console, "shared.ipynb")
    edited = first_panel.locator("#jp-tfgpu-field-memory_limit_mb")
    edited.fill("1000")

    # When the policy is saved through the REST API
    lab.api("PUT", "tfgpu/api/policies/shared.ipynb", {"memory_limit_mb": 3072})

    # Then the second tab shows it
    expect(second_panel.locator("#jp-tfgpu-field-memory_limit_mb")).to_have_value("3072", timeout=15_000)
    # And the first keeps the user's edit and says the policy changed elsewhere
    notice = first_panel.get_by_role("alert").filter(has_text="changed elsewhere")
    expect(notice).to_be_visible(timeout=15_000)
    expect(edited).to_have_value("1000")

    # When the user reloads the form
    notice.get_by_role("button", name="Reload").click()

    # Then it shows the saved policy and the notice goes; neither page was reloaded
    expect(edited).to_have_value("3072")
    expect(notice).to_have_count(0)
    assert not_reloaded(first) and not_reloaded(second)
    first.context.close()
    second.context.close()
    assert console.errors == []

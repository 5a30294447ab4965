"""PCIe and NVLink on the GPU cards, read only while the panel asks for them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.labserver import Lab, open_lab, open_panel, start_lab

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two simulated GPUs, NVLink-bridged as simulated multi-GPU servers are."""
    yield from start_lab(tmp_path_factory, "simulated")


def test_the_interconnect_toggle_shows_pcie_and_nvlink(browser: Any, lab: Lab, console: Any) -> None:
    # Given the panel open, nobody watching the interconnect
    page = open_lab(browser, lab, console)
    panel = open_panel(page)
    toggle = panel.get_by_role("button", name="PCIe/NVLink")
    links = panel.locator(".jp-tfgpu-Gpu-link")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(links).to_have_count(0)
    assert lab.api("GET", "tfgpu/api/status")["sampler"]["pcie_watched"] is False

    # When the user turns it on
    toggle.click()

    # Then each card shows PCIe and its NVLink links, and the server reads them
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(links).to_have_count(2, timeout=15_000)
    expect(links.first).to_contain_text("PCIe")
    expect(links.first).to_contain_text("NVLink 4/4 links")
    assert lab.api("GET", "tfgpu/api/status")["sampler"]["pcie_watched"] is True

    # When the user turns it off, the server stops reading them
    toggle.click()
    expect(links).to_have_count(0, timeout=15_000)
    assert lab.api("GET", "tfgpu/api/status")["sampler"]["pcie_watched"] is False
    page.context.close()
    assert console.errors == []

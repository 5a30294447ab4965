"""Without a GPU backend (`--TFGPU.backend=none`) the panel explains why, with no empty charts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.labserver import Lab, open_lab, open_panel, start_lab

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab server with GPU monitoring off."""
    yield from start_lab(tmp_path_factory, "none")


def test_panel_and_status_bar_explain_there_is_no_gpu(browser: Any, lab: Lab, console: Any) -> None:
    # Given a server whose GPU backend is off
    page = open_lab(browser, lab, console)
    # When the user opens the GPU panel
    panel = open_panel(page)
    # Then it shows the backend's reason in words, and no GPU cards or charts
    explanation = panel.locator(".jp-tfgpu-Unavailable")
    explanation.wait_for()
    reason = lab.api("GET", "tfgpu/api/status")["reason"]
    assert reason and reason in explanation.inner_text()
    assert "turned GPU monitoring off" in explanation.inner_text()
    assert panel.locator(".jp-tfgpu-Gpu, .jp-tfgpu-Sparkline, .jp-tfgpu-Holders").count() == 0
    # And the status bar item says there is nothing to show, and why
    item = page.locator(".jp-tfgpu-StatusItem")
    assert item.locator(".jp-tfgpu-StatusItem-text").inner_text() == "GPU: n/a"
    assert reason in item.get_attribute("title")
    page.context.close()
    assert console.errors == []

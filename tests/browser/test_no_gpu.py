"""Without a GPU backend the panel explains why, with no empty charts: calmly when monitoring is
off (`--TFGPU.backend=none`), as a warning when the admin named NVML and it cannot start."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.labserver import Lab, open_lab, open_panel, start_lab, wait_for_kernel

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
    # calmly: an admin's choice, not a failure
    assert "jp-mod-warning" not in explanation.get_attribute("class")
    assert explanation.get_attribute("role") == "status"
    assert panel.locator(".jp-tfgpu-Gpu, .jp-tfgpu-Sparkline, .jp-tfgpu-Holders").count() == 0
    # And the status bar item says there is nothing to show, and why
    item = page.locator(".jp-tfgpu-StatusItem")
    assert item.locator(".jp-tfgpu-StatusItem-text").inner_text() == "GPU: n/a"
    assert reason in item.get_attribute("title")
    page.context.close()
    assert console.errors == []


@pytest.fixture(scope="module")
def nvml_missing_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab server told to use NVML, whose library is missing."""
    yield from start_lab(tmp_path_factory, "nvml", without_nvml=True)


def test_nvml_named_but_missing_warns_and_says_the_kernel_runs_on_the_cpu(
    browser: Any, nvml_missing_lab: Lab, console: Any
) -> None:
    lab = nvml_missing_lab
    # Given a server set to NVML that cannot start it, and a notebook that lets the server
    # choose its GPU
    lab.api("PUT", "tfgpu/api/policies/auto.ipynb", {"devices": "auto"})
    lab.notebook("auto.ipynb", "x = 1")
    # When the user opens the notebook and its kernel starts
    page = open_lab(browser, lab, console, "lab/tree/auto.ipynb")
    kernel_id = wait_for_kernel(page)
    # Then JupyterLab says that kernel runs on the CPU only, and why
    placed = "no GPU monitoring (NVML Shared Library Not Found): this kernel runs on the CPU only"
    page.get_by_text(f"auto.ipynb: {placed}.").wait_for(timeout=30_000)
    kernel = lab.api("GET", f"tfgpu/api/kernels/{kernel_id}")
    assert kernel["applied"]["placement"]["reason"] == placed
    # When the user opens the GPU panel
    panel = open_panel(page)
    # Then a warning banner names NVML, its reason and when the server tries again
    banner = panel.locator(".jp-tfgpu-Unavailable.jp-mod-warning")
    banner.wait_for()
    text = banner.inner_text()
    assert banner.get_attribute("role") == "alert"
    assert "GPU monitoring failed" in text
    assert "read its GPUs with NVML, which did not start: NVML Shared Library Not Found." in text
    assert re.search(r"It (tries again in \d+ s|is trying again now)\.", text), text
    # And the status bar item warns with the same reason
    item = page.locator(".jp-tfgpu-StatusItem.jp-mod-warning")
    assert item.locator(".jp-tfgpu-StatusItem-text").inner_text() == "GPU: n/a"
    assert "NVML Shared Library Not Found" in item.get_attribute("title")
    page.context.close()
    assert console.errors == []

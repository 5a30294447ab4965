"""Where a kernel's GPU memory figure comes from, when it is unknown, and what its cap leaves its
frameworks, as the GPU panel and the status bar say it: JupyterLab over a fake NVML that sees
its GPUs as from inside a container (`lab_in_container.py`: GPU 0 lists a process the server
cannot match by PID, GPU 1's process list times out at every read)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.a11y import unnamed_controls
from tests.browser.labserver import (
    Lab,
    open_lab,
    open_panel,
    run_first_cell,
    start_lab,
    wait_for_kernel,
)

pytestmark = pytest.mark.browser

OWN_REPORT = (
    "Reported by the kernel's frameworks from inside the kernel (the server cannot match the "
    "GPU's processes to it, as in a container without the host's PIDs); leaves out the CUDA context."
)
# The kernel's cell: report 2 GiB reserved on GPU 0 every 3 s, as its reporter does for torch.
REPORT = (
    "import threading, time, tfgpu_report\n"
    "def report():\n"
    "    while True:\n"
    "        tfgpu_report.send_once('torch', [{{'uuid': '{uuid}', 'reserved': 2 * 2**30}}])\n"
    "        time.sleep(3)\n"
    "threading.Thread(target=report, daemon=True).start()\n"
    "print('reporting')"
)
STALE = "GPU 1's process list could not be read (NVMLError_Timeout: Timeout)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab server for the module, over the container-like fake NVML."""
    yield from start_lab(tmp_path_factory, "nvml", launcher="lab_in_container.py")


def test_a_kernels_own_report_is_its_figure_tagged_so(browser: Any, lab: Lab, console: Any) -> None:
    # Given a notebook placed on GPU 0 with a 4 GiB cap, whose kernel reports 2 GiB there itself
    # (NVML lists 3 GiB for a process there, the CUDA context included, that it cannot match)
    uuid = lab.api("GET", "tfgpu/api/gpus")["gpus"][0]["uuid"]
    lab.api("PUT", "tfgpu/api/policies/boxed.ipynb", {"devices": [0], "memory_limit_mb": 4096})
    lab.notebook("boxed.ipynb", REPORT.format(uuid=uuid))
    page = open_lab(browser, lab, console, "lab/tree/boxed.ipynb")
    wait_for_kernel(page)
    # When its cell runs and the user opens the panel
    run_first_cell(page)
    page.locator(".jp-OutputArea-output", has_text="reporting").wait_for(timeout=60_000)
    panel = open_panel(page)

    # Then its row shows its own report's figure, the GPU tagged "own report" with what it means
    row = panel.locator(".jp-tfgpu-Holder", has=page.locator("button", has_text="boxed.ipynb"))
    row.wait_for(timeout=30_000)
    expect(row.locator(".jp-tfgpu-Holder-memory")).to_have_text("2.0 GiB", timeout=20_000)
    tag = row.locator(".jp-tfgpu-Tag:not(.jp-tfgpu-Enforcement)")
    expect(tag).to_have_text("own report")
    assert tag.get_attribute("title") == OWN_REPORT
    assert row.locator(".jp-tfgpu-Holder-foot").inner_text().startswith("GPU 0 own report")
    # And the list says once what the tag means; the process is not counted twice
    expect(panel.locator(".jp-tfgpu-Footnote")).to_have_text(
        "Own report: the kernel's frameworks' own figure, sent from inside the kernel; it leaves "
        "out the CUDA context."
    )
    # (the process is matched to the kernel once the panel has the kernel's report: waited for)
    others = panel.locator(".jp-tfgpu-Holder-name", has_text="Other processes")
    expect(others).to_have_count(0, timeout=20_000)
    # And its memory is known: GPU 1's list is stale, but this kernel may use GPU 0 only
    expect(row.locator(".jp-tfgpu-mod-unknown")).to_have_count(0)

    # And GPU 1's card says its process list is not current, and why; GPU 0's says nothing
    cards = panel.locator(".jp-tfgpu-Gpu")
    expect(cards.nth(1).locator(".jp-tfgpu-Gpu-stale")).to_have_text(
        "Process list not current: NVMLError_Timeout: Timeout"
    )
    assert cards.nth(0).locator(".jp-tfgpu-Gpu-stale").count() == 0

    # And the policy section says the running kernel's cap, what its frameworks get, and that
    # the cap is cooperative (the tag after it)
    cap = panel.locator(".jp-tfgpu-Cap")
    expect(cap.locator("span[title]").first).to_have_text(
        "Running kernel: cap 4.0 GiB per GPU (frameworks get 3.5 GiB; 550 MiB left for the CUDA "
        "context, starting value)."
    )
    expect(cap.locator(".jp-tfgpu-Enforcement [aria-hidden]")).to_have_text("cooperative")
    # And so does its row
    expect(row.locator(".jp-tfgpu-Enforcement [aria-hidden]")).to_have_text("cooperative")
    # And the status bar holds the report to the limit its frameworks got, and says what it is
    item = page.locator(".jp-tfgpu-StatusItem")
    expect(item.locator(".jp-tfgpu-StatusItem-text")).to_have_text("GPU: 2.0 / 3.5 GiB limit")
    assert "(GPU 0: 2.0 GiB, its own report)" in item.get_attribute("title")
    assert "a cooperative cap (framework settings)." in item.get_attribute("title")
    page.context.close()
    assert console.errors == []


def test_unknown_memory_is_a_warning_with_the_reason(browser: Any, lab: Lab, console: Any) -> None:
    # Given a notebook that may use any GPU (GPU 1's process list times out), capped at 300 MiB,
    # less than the CUDA context alone needs
    lab.api("PUT", "tfgpu/api/policies/open.ipynb", {"memory_limit_mb": 300})
    lab.notebook("open.ipynb", "x = 1")
    page = open_lab(browser, lab, console, "lab/tree/open.ipynb")
    wait_for_kernel(page)
    # When the user opens the panel
    panel = open_panel(page)

    # Then the notebook is listed with a warning that its GPU memory is unknown, and why
    item = panel.locator(".jp-tfgpu-Holder", has=page.locator(".jp-tfgpu-mod-unknown"))
    item.wait_for(timeout=30_000)
    expect(item.locator(".jp-tfgpu-Holder-name")).to_have_text("open.ipynb")
    expect(item.locator(".jp-tfgpu-mod-unknown")).to_have_text("GPU memory unknown")
    reason = item.locator(".jp-tfgpu-Holder-reason")
    expect(reason).to_have_text(STALE)
    assert item.locator(".jp-tfgpu-mod-unknown").get_attribute("title") == STALE
    # And a screen reader reads the badge with its reason, and every control has a name
    snapshot = panel.aria_snapshot()
    assert "GPU memory unknown" in snapshot and STALE in snapshot, snapshot
    assert unnamed_controls(snapshot) == [], snapshot

    # And the policy section warns that the cap leaves no room for the CUDA context
    expect(panel.locator(".jp-tfgpu-Cap span[title]").first).to_have_text(
        "Running kernel: cap 300 MiB per GPU."
    )
    expect(panel.locator(".jp-tfgpu-Note.jp-mod-warning")).to_have_text(
        re.compile(
            r"^The running kernel's cap: memory_limit_mb 300 is at or below the 550 MiB .*"
            r"any GPU use passes the cap\.$"
        )
    )
    # And the status bar says unknown, not 0 B, as a warning
    item = page.locator(".jp-tfgpu-StatusItem")
    expect(item.locator(".jp-tfgpu-StatusItem-text")).to_have_text("GPU: unknown", timeout=20_000)
    expect(item).to_have_class(re.compile(r"\bjp-mod-warning\b"))
    assert item.get_attribute("title").startswith(
        f"This notebook's kernel's GPU memory is unknown now: {STALE}."
    )
    page.context.close()
    assert console.errors == []

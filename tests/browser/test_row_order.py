"""The panel's kernel rows keep their places while a keyboard user is on one of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.labserver import Lab, open_lab, open_panel, start_lab

pytestmark = pytest.mark.browser

START = """async ([path, code]) => {
  const s = await window.jupyterapp.serviceManager.sessions.startNew(
    {path, name: path, type: 'notebook', kernel: {name: 'python3'}});
  window.__kernels = window.__kernels || {};
  window.__kernels[path] = s.kernel;
  await s.kernel.requestExecute({code}).done;
}"""
RUN = "async ([path, code]) => { await window.__kernels[path].requestExecute({code}).done; }"
ROWS = """() => [...document.querySelectorAll('ul.jp-tfgpu-Holders .jp-tfgpu-Holder')]
  .filter(row => row.querySelector('.jp-tfgpu-Holder-memory'))
  .map(row => [row.querySelector('.jp-tfgpu-Holder-name').textContent,
               row.querySelector('.jp-tfgpu-Holder-memory').textContent])"""
# b's row shows more memory than a's, whatever order the rows are in
B_ABOVE_A = f"""() => {{
  const mib = text => parseFloat(text) * (text.includes('GiB') ? 1024 : 1);
  const rows = Object.fromEntries(({ROWS})());
  return rows['b.ipynb'] && rows['a.ipynb'] && mib(rows['b.ipynb']) > mib(rows['a.ipynb']);
}}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A simulated-GPU lab server: a kernel's memory is its processes' real memory."""
    yield from start_lab(tmp_path_factory, "simulated")


def allocate(mib: int, name: str) -> str:
    return f"import numpy as np\n{name} = np.ones({mib} * 2**20 // 8)"


def order(page: Any) -> list[str]:
    return [name for name, _ in page.evaluate(ROWS)]


def test_rows_keep_their_places_while_the_focus_is_on_one(browser: Any, lab: Lab, console: Any) -> None:
    # Given two notebooks' kernels, a holding more memory than b, and the keyboard focus on a's row
    lab.notebook("a.ipynb", "x = 1")
    lab.notebook("b.ipynb", "x = 1")
    page = open_lab(browser, lab, console)
    open_panel(page)
    page.evaluate(START, ["a.ipynb", allocate(400, "block")])
    page.evaluate(START, ["b.ipynb", allocate(50, "block")])
    page.wait_for_function(f"() => ({ROWS})().map(r => r[0]).join() === 'a.ipynb,b.ipynb'", timeout=60_000)
    link = page.get_by_role("button", name="Open a.ipynb")
    link.focus()
    # When b grows past a, and the panel shows it
    page.evaluate(RUN, ["b.ipynb", allocate(900, "more")])
    page.wait_for_function(B_ABOVE_A, timeout=60_000)
    # Then the rows have not moved, and the focus is where it was; Tab goes on within a's row
    assert order(page) == ["a.ipynb", "b.ipynb"]
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Open a.ipynb"
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == (
        "Interrupt the kernel (a.ipynb)"
    )
    # When the focus leaves the list, the rows are sorted again
    page.locator(".jp-tfgpu-Toggle").first.focus()
    page.wait_for_function(f"() => ({ROWS})().map(r => r[0]).join() === 'b.ipynb,a.ipynb'", timeout=30_000)
    page.context.close()
    assert console.errors == []

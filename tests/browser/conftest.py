"""Real-browser set-up: Debian's Chromium driven by Playwright (the Python package).

Nothing here downloads a browser: Playwright drives /usr/bin/chromium, which
`scripts/install-browser.sh` installs with apt. Without it the tests are skipped with the
reason, except in CI (env `CI` set), where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.labserver import CHROMIUM, CHROMIUM_ARGS, Console


def _missing(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where the browser must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright.

    Module-scoped: Playwright's sync API keeps an event loop running while it is open, which
    must be gone before the other tests (pytest-jupyter's in-process servers) start their own.
    """
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is missing: run `bash scripts/install-browser.sh`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is missing: pip install playwright")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def console() -> Console:
    """The page's errors; a test that expects none asserts `console.errors == []`."""
    return Console()


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[None]:
    """Replace pytest-jupyter's autouse loop fixture: it would close Playwright's running loop.

    These tests talk to their server over HTTP and need no loop of their own.
    """
    yield None


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> Iterator[None]:
    """Replace pytest-jupyter's autouse in-process server cleanup: these servers are subprocesses."""
    yield None

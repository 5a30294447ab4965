"""Helpers for the real-browser tests: a throw-away JupyterLab server, and page steps."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BASE_URL = "/lab-base/"
REPO = Path(__file__).resolve().parents[2]
BUILT_EXTENSION = REPO / "jupyter_tfgpu" / "labextension"
VIEWPORT = {"width": 1280, "height": 900}
# The front ends the tests start: the module `python -m` runs, and its own options.
APPS = {
    "lab": ("jupyterlab", ["--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True"]),
    "notebook": ("notebook", ["--JupyterNotebookApp.expose_app_in_browser=True"]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running `jupyter lab` (or `jupyter notebook`, `app="notebook"`) subprocess with its own
    throw-away HOME and Jupyter folders."""

    def __init__(
        self,
        scratch: Path,
        backend: str,
        extra: list[str],
        without_nvml: bool = False,
        app: str = "lab",
        launcher: str | None = None,
    ) -> None:
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.root = scratch / "root"
        home, config, data = scratch / "home", scratch / "config", scratch / "data"
        path = scratch / "path"  # JUPYTER_PATH comes first, even before the venv's folders
        for folder in (self.root, home, config, data, path / "labextensions", scratch / "runtime"):
            folder.mkdir(parents=True)
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_tfgpu": True}}})
        )
        # No "get notified about Jupyter news?" toast in the tests' screenshots.
        (config / "labconfig").mkdir()
        (config / "labconfig" / "page_config.json").write_text(
            json.dumps(
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
            )
        )
        # Test the extension built in this tree, not a copy an earlier `pip install` left.
        if not (BUILT_EXTENSION / "package.json").exists():
            pytest.fail("the lab extension is not built: cd labextension && npm run build:prod")
        (path / "labextensions" / "jupyter-tfgpu").symlink_to(BUILT_EXTENSION)
        env = {
            **os.environ,
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(data),
            "JUPYTER_PATH": str(path),
            "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
            "IPYTHONDIR": str(scratch / "ipython"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.pop("TFGPU_BACKEND", None)
        self.log_path = scratch / "lab.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # The one fake: NVML's library (missing, or a fake pynvml), run by a script beside this
        # one in place of `python -m jupyterlab`, for a backend named "nvml".
        launcher = "lab_without_nvml.py" if without_nvml else launcher
        module, app_options = APPS[app]
        lab = (
            [sys.executable, str(Path(__file__).with_name(launcher))]
            if launcher
            else [sys.executable, "-m", module]
        )
        self.proc = subprocess.Popen(
            [
                *lab,
                "--no-browser", "--allow-root",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0", f"--ServerApp.base_url={BASE_URL}",
                f"--ServerApp.root_dir={self.root}", f"--IdentityProvider.token={self.token}",
                *app_options,
                f"--TFGPU.backend={backend}", "--TFGPU.process_interval=0.5",
                "--TFGPU.sample_interval=0.5", *extra,
            ],
            env=env, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait()

    def url(self, path: str = "") -> str:
        """An absolute URL under the server's base_url."""
        return f"http://127.0.0.1:{self.port}{BASE_URL}{path}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the server's REST API with the token; the JSON answer (None when empty)."""
        request = urllib.request.Request(
            self.url(path),
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def notebook(self, name: str, *sources: str) -> str:
        """Write a notebook of code cells into the server's root; its path."""
        cells = [
            {
                "cell_type": "code",
                "metadata": {},
                "source": s,
                "outputs": [],
                "execution_count": None,
            }
            for s in sources
        ]
        kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
        content = {"cells": cells, "metadata": {"kernelspec": kernelspec}}
        (self.root / name).write_text(json.dumps({**content, "nbformat": 4, "nbformat_minor": 5}))
        return name

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def _wait(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "tfgpu/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"jupyter lab did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and its kernels."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def start_lab(
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    *extra: str,
    without_nvml: bool = False,
    app: str = "lab",
    launcher: str | None = None,
) -> Iterator[Lab]:
    """Run one lab (or notebook) server for a module (use from a module-scoped fixture);
    ``launcher``: a script here that runs JupyterLab over a fake NVML."""
    scratch = tmp_path_factory.mktemp(f"{app}-{backend}")
    lab = Lab(scratch, backend, list(extra), without_nvml, app, launcher)
    try:
        yield lab
    finally:
        lab.stop()


class Console:
    """Errors the page logged or threw."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._expected: list[str] = []

    def expect(self, pattern: str) -> None:
        """An error the test provokes on purpose (e.g. Chromium logs every 4xx answer)."""
        self._expected.append(pattern)

    def on_message(self, message: Any) -> None:
        """Keep console.error lines, except expected ones."""
        if message.type == "error" and not any(re.search(p, message.text) for p in self._expected):
            self.errors.append(f"console.error: {message.text} @ {message.location}")

    def on_error(self, error: Any) -> None:
        """Keep uncaught exceptions."""
        self.errors.append(f"uncaught: {error}")


def open_lab(
    browser: Any, lab: Lab, console: Console, path: str = "lab", ready: str = "#jp-main-statusbar"
) -> Any:
    """A fresh browser context logged in with the token, on `path`, once JupyterLab started
    (for Notebook 7, which has no status bar, `ready` names another element to wait for)."""
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    page.on("console", console.on_message)
    page.on("pageerror", console.on_error)
    sep = "&" if "?" in path else "?"
    page.goto(lab.url(f"{path}{sep}reset&token={lab.token}"))
    page.wait_for_function("() => !!window.jupyterapp", timeout=60_000)
    page.evaluate("() => window.jupyterapp.restored")
    page.wait_for_selector(ready)
    return page


def wait_for_kernel(page: Any, timeout: float = 60_000) -> str:
    """Wait until the current notebook's kernel is idle; its id."""
    page.wait_for_function(
        """() => {
          const w = window.jupyterapp.shell.currentWidget;
          const kernel = w && w.sessionContext && w.sessionContext.session &&
            w.sessionContext.session.kernel;
          return !!kernel && kernel.status === 'idle';
        }""",
        timeout=timeout,
    )
    return page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id"
    )


def run_first_cell(page: Any) -> None:
    """Put the cursor in the first cell and press Shift+Enter, as a user would."""
    page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")


def open_panel(page: Any) -> Any:
    """Click the GPU tab in the left sidebar; the panel's locator."""
    page.locator('.jp-SideBar [data-id="jp-tfgpu-panel"]').click()
    panel = page.locator("#jp-tfgpu-panel")
    panel.wait_for(state="visible")
    return panel


def mib(text: str) -> float:
    """`412.5 MiB` or `1.2 GiB` in MiB."""
    number, unit = re.search(r"([\d.]+)\s*(B|KiB|MiB|GiB|TiB)", text).groups()
    scale = {"B": 2**-20, "KiB": 2**-10, "MiB": 1, "GiB": 2**10, "TiB": 2**20}[unit]
    return float(number) * scale

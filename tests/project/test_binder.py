"""binder/ works: install from it into a fresh venv, start the server as mybinder would, run the demo.

The repository is really installed from ``binder/requirements.txt``, run from the root of a copy
of the working tree as repo2docker runs it from the repository's root: ``.`` is built into a
wheel and installed into the new venv, with its lab extension and server config. The copy keeps
the lab extension that ``pip install -e .`` prebuilt, so no npm build runs, and nothing is built
or written in the working tree, where others may be building at the same time. To keep CI short,
the third-party packages already installed in the running environment are reused: the new venv
sees them through a ``.pth`` file, so pip finds them satisfied instead of downloading
TensorFlow again. ``TFGPU_BINDER_ISOLATED=1`` installs everything from the index instead.

The server is started through ``binder/start`` (which points Jupyter at
``binder/jupyter_server_config.py``: the simulated backend) on 127.0.0.1, the demo is opened as
JupyterLab opens a notebook (``POST api/sessions``), and nbclient runs its cells in that
server-started kernel, connected through the connection file in the server's runtime folder.
Where the demo asks the person to restart the kernel, the test restarts it through the server's
REST API. Any cell that errors fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
requests = pytest.importorskip("requests")
from jupyter_client.asynchronous import AsyncKernelClient
from nbclient import NotebookClient

from tests.project.installed_server import TOKEN, Server, bin_python, clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
DEMO = "binder/demo.ipynb"
RESTART_TAG = "restart-kernel"
# What hatch-jupyter-builder checks to skip the npm build (pyproject's ensured-targets).
PREBUILT = ("jupyter_tfgpu/labextension/static/style.js", "jupyter_tfgpu/labextension/package.json")
# Not part of a checkout, or build output other than the prebuilt lab extension.
NOT_COPIED_ANYWHERE = {
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    ".ruff_cache",
    ".pytest_cache",
}
NOT_COPIED_AT = {ROOT: {"build", "dist", ".whl", ".ci-home"}, ROOT / "labextension": {"lib"}}

pytestmark = pytest.mark.timeout(600)


def make_venv(venv: Path) -> None:
    """A fresh venv; unless isolated, it sees the running environment's packages after its own."""
    isolated = os.environ.get("TFGPU_BINDER_ISOLATED") == "1"
    subprocess.run(
        [sys.executable, "-m", "venv", *([] if isolated else ["--without-pip"]), str(venv)],
        check=True,
    )
    if isolated:
        return
    purelib = subprocess.run(
        [bin_python(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Appended after the venv's own site-packages: what pip installs into the venv comes first.
    Path(purelib, "_reuse_running_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _not_copied(folder: str, names: list[str]) -> set[str]:
    """What a fresh checkout with a prebuilt lab extension does not have."""
    here = NOT_COPIED_AT.get(Path(folder), set())
    return {n for n in names if n in NOT_COPIED_ANYWHERE or n in here or n.endswith(".egg-info")}


class ServerKernel:
    """The kernel manager nbclient needs, for a kernel that a separate server started and owns."""

    has_kernel = True

    def __init__(self, server: Server, kernel_id: str) -> None:
        self.server = server
        self.kernel_id = kernel_id

    def client(self) -> AsyncKernelClient:
        """A client connected through the server's connection file for this kernel."""
        client = AsyncKernelClient()
        client.load_connection_file(self.server.runtime / f"kernel-{self.kernel_id}.json")
        return client

    async def is_alive(self) -> bool:
        """Whether the server still runs the kernel."""
        return self.server.request("GET", f"api/kernels/{self.kernel_id}").status_code == 200

    async def interrupt_kernel(self) -> None:
        """Interrupt through the server (nbclient does on a cell timeout)."""
        self.server.request("POST", f"api/kernels/{self.kernel_id}/interrupt")

    async def shutdown_kernel(self, now: bool = False) -> None:
        """Shut down through the server."""
        self.server.request("DELETE", f"api/kernels/{self.kernel_id}")

    async def cleanup_resources(self, restart: bool = False) -> None:
        """The server cleans up after its own kernels."""


@pytest.fixture(scope="module")
def binder_server(tmp_path_factory) -> Iterator[tuple[Server, Path, Path]]:
    """Install from binder/ into a fresh venv, then start JupyterLab from it as binder does."""
    tmp = tmp_path_factory.mktemp("binder")
    venv, home, root = tmp / "venv", tmp / "home", tmp / "root"
    home.mkdir()
    missing = [p for p in PREBUILT if not (ROOT / p).exists()]
    if missing:
        pytest.fail(
            f"the lab extension is not built ({', '.join(missing)} missing): pip install -e ."
        )
    # The server's root is a copy of the repository's binder/ at the same place, so the demo
    # has its binder path and the run writes nothing into the repository.
    shutil.copytree(BINDER, root / "binder")
    source = tmp / "checkout"
    shutil.copytree(ROOT, source, ignore=_not_copied, symlinks=True)
    make_venv(venv)
    env = clean_env(home, venv)
    # Given binder's requirements installed as repo2docker does: from the repository's root
    install = subprocess.run(
        [
            bin_python(venv),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-r",
            "binder/requirements.txt",
        ],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    port = free_port()
    log = tmp / "server.log"
    command = [
        str(BINDER / "start"),
        str(bin_python(venv)),
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}",
    ]
    if os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/", process, log, home / "runtime")
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited:\n{server.log_tail()}")
            try:
                if server.request("GET", "api/status").status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server, venv, root
    finally:
        for session in _sessions(server):
            server.request("DELETE", f"api/sessions/{session['id']}")
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _sessions(server: Server) -> list[dict[str, Any]]:
    try:
        return server.request("GET", "api/sessions").json()
    except (requests.RequestException, ValueError):
        return []


def test_the_repository_is_installed_into_the_venv_from_binder(binder_server):
    """The server runs this repository's package as installed in binder's venv, with its lab extension."""
    server, venv, _ = binder_server
    # Then the package, its lab extension and its auto-enable file are in the venv
    probe = subprocess.run(
        [bin_python(venv), "-c", "import jupyter_tfgpu; print(jupyter_tfgpu.__file__)"],
        cwd=venv,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(venv)), probe.stdout
    assert (venv / "share/jupyter/labextensions/jupyter-tfgpu/package.json").exists()
    assert (venv / "etc/jupyter/jupyter_server_config.d/jupyter_tfgpu.json").exists()
    # And JupyterLab loads the extension; the server runs binder's settings
    lab = server.request("GET", "lab")
    assert lab.status_code == 200 and "jupyter-tfgpu" in lab.text
    status = server.request("GET", "tfgpu/api/status").json()
    assert status["backend"] == "simulated" and status["available"] is True
    config = server.request("GET", "tfgpu/api/config").json()
    assert config["max_memory_mb"] == 8192


def test_the_demo_notebook_runs_in_a_server_started_kernel(binder_server):
    """Every cell of binder/demo.ipynb runs without error, restart included, and shows each step."""
    server, _, root = binder_server
    # Given the demo opened as JupyterLab opens it
    body = {"path": DEMO, "name": "demo.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    answer = server.request("POST", "api/sessions", json=body)
    assert answer.status_code == 201, answer.text
    kernel_id = answer.json()["kernel"]["id"]
    nb = nbformat.read(root / DEMO, as_version=4)
    # When its cells run in that kernel, with the restart where the demo asks for it
    try:
        asyncio.run(_execute(nb, server, kernel_id))
    finally:  # what ran, to read when this fails
        nbformat.write(nb, root / "binder" / "demo.executed.ipynb")
    # Then every step showed what the demo says it shows
    text = [_text(cell) for cell in nb.cells if cell.cell_type == "code"]
    joined = "\n".join(text)
    assert "Simulated GPU 16GB" in text[0] and DEMO in text[0]
    assert "%tfgpu policy --reset" in text[1]
    widgets_import = _import_ok("jupyter_tfgpu.widgets")
    if widgets_import:
        assert _widget_views(nb) >= 2, "GPUPanel and PolicyEditor are displayed"
    assert f"Saved the policy of {DEMO}." in joined
    assert "Refused:" in joined and "8192 MiB" in joined
    assert f"this kernel ({DEMO})" in joined
    assert "TensorFlow already initialized the GPU in this kernel" in joined
    assert "Restart required" in joined
    assert "runs with its notebook's policy" in _after_restart(nb, text)
    assert '"memory_limit_mb": 1024' in joined
    assert f"Removed the policy of {DEMO}." in joined


async def _execute(nb: Any, server: Server, kernel_id: str) -> None:
    """Run every cell; restart through the REST API where a cell is tagged restart-kernel."""
    km = ServerKernel(server, kernel_id)
    client = NotebookClient(nb, km=km, timeout=240, allow_errors=False, startup_timeout=120)
    async with client.async_setup_kernel():
        try:
            for index, cell in enumerate(nb.cells):
                if RESTART_TAG in cell.metadata.get("tags", []):
                    client.kc.stop_channels()
                    restart = server.request("POST", f"api/kernels/{kernel_id}/restart")
                    assert restart.status_code == 200, restart.text
                    await client.async_start_new_kernel_client()
                await client.async_execute_cell(cell, index)
        finally:
            if client.kc is not None:
                client.kc.stop_channels()


def _text(cell: Any) -> str:
    """A code cell's text outputs (plain text, HTML, streams, errors) joined."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts)


def _widget_views(nb: Any) -> int:
    """How many outputs are widget views."""
    return sum(
        "application/vnd.jupyter.widget-view+json" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def _after_restart(nb: Any, text: list[str]) -> str:
    """The output text of the first code cell after the restart."""
    seen = False
    index = 0
    for cell in nb.cells:
        if RESTART_TAG in cell.metadata.get("tags", []):
            seen = True
        if cell.cell_type == "code":
            if seen:
                return text[index]
            index += 1
    raise AssertionError("the demo has no restart-kernel cell")


def _import_ok(module: str) -> bool:
    """Whether ``module`` imports here (the widgets are optional in the demo)."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_binder_files_are_what_mybinder_reads():
    """requirements.txt installs the repository and the TF CPU build; start is executable; the
    demo links the sidebar screenshot and carries no outputs."""
    requirements = (BINDER / "requirements.txt").read_text().split("\n")
    lines = [line.strip() for line in requirements if line.strip() and not line.startswith("#")]
    assert "." in lines
    assert any(re.match(r"tensorflow-cpu\b", line) for line in lines)
    assert os.access(BINDER / "start", os.X_OK)
    assert 'c.TFGPU.backend = "simulated"' in (BINDER / "jupyter_server_config.py").read_text()
    nb = nbformat.read(BINDER / "demo.ipynb", as_version=4)
    nbformat.validate(nb)
    assert "../docs/images/panel-light.png" in "".join(c.source for c in nb.cells)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert (
        json.loads((BINDER / "demo.ipynb").read_text())["metadata"]["kernelspec"]["name"]
        == "python3"
    )

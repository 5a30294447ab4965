"""A release installs and runs on its own: build it as a site would, install the wheel into a
fresh venv with no source tree and no index, start a server with the extension on.

``scripts/release.sh --wheelhouse`` builds the sdist and the wheel from a copy of this checkout
(the lab extension built for production inside), checks them, and downloads every dependency
into a wheelhouse. The new venv installs from that wheelhouse only (``--no-index``), in a
folder outside the repository, so nothing can come from the source tree or an index. The
server is started from the venv on a non-root base_url with a token; a notebook's kernel is
started through the REST API, and code run in it shows the policy bootstrap and ``%tfgpu``
loaded from the installed package.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking import BlockingKernelClient

from tests.project.installed_server import TOKEN, Server, bin_python, clean_env, free_port, requests

ROOT = Path(__file__).resolve().parents[2]
BASE_URL = "/release/"

pytestmark = pytest.mark.timeout(1800)


def version() -> str:
    """The version this checkout carries."""
    text = (ROOT / "jupyter_tfgpu" / "_version.py").read_text()
    return re.search(r"__version__ = \"([^\"]+)\"", text).group(1)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, str]:
    """The release folder that scripts/release.sh made, and what it printed."""
    out = tmp_path_factory.mktemp("release")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "release.sh"), "--out", str(out), "--wheelhouse"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-6000:]
    return out, printed


@pytest.fixture(scope="module")
def installed(release, tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    """A fresh venv with the released wheel installed from the wheelhouse, and its server."""
    out, _ = release
    tmp = tmp_path_factory.mktemp("site")
    venv, home, root = tmp / "venv", tmp / "home", tmp / "notebooks"
    home.mkdir()
    root.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = clean_env(home, venv)
    install = subprocess.run(
        [bin_python(venv), "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
         "--find-links", str(out / "wheelhouse"), "jupyter-tfgpu", "ipykernel"],  # fmt: skip
        cwd=tmp,
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
        str(bin_python(venv)), "-m", "jupyter_server", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={BASE_URL}", f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={root}", "--TFGPU.backend=simulated",
    ]  # fmt: skip
    if os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=output, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}{BASE_URL}", process, log, home / "runtime")
    try:
        _wait_for(server, lambda: server.request("GET", "api/status").status_code == 200)
        yield server, venv
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for(server: Server, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited:\n{server.log_tail()}")
        try:
            if check():
                return
        except (requests.ConnectionError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not get there in {timeout} s:\n{server.log_tail()}")
        time.sleep(0.25)


def test_the_package_the_lab_extension_and_the_changelog_agree_on_the_version():
    """One version: the Python package's, the lab extension's and the newest changelog heading."""
    lab = json.loads((ROOT / "labextension" / "package.json").read_text())["version"]
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE).group(1)
    assert version() == lab == newest


def test_the_release_is_built_checked_and_named(release):
    """One wheel, one sdist and a wheelhouse, of this checkout's version, checked."""
    out, printed = release
    v = version()
    assert (out / f"jupyter_tfgpu-{v}-py3-none-any.whl").is_file()
    assert (out / f"jupyter_tfgpu-{v}.tar.gz").is_file()
    assert "check_dist: " in printed and f"carry version {v}" in printed
    assert "PASSED" in printed  # twine check
    wheelhouse = {p.name.split("-")[0].lower() for p in (out / "wheelhouse").iterdir()}
    assert {"jupyter_tfgpu", "jupyter_server", "jupyterlab", "ipywidgets", "nvidia_ml_py"} <= wheelhouse


def test_the_wheel_installs_offline_and_serves(installed):
    """The package, its lab extension and its auto-enable file come from the venv, and the
    server it runs answers the tfgpu API under the base_url."""
    server, venv = installed
    probe = subprocess.run(
        [bin_python(venv), "-c", "import jupyter_tfgpu; print(jupyter_tfgpu.__file__)"],
        cwd=venv, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip().startswith(str(venv)), probe.stdout
    assert (venv / "share/jupyter/labextensions/jupyter-tfgpu/package.json").is_file()
    assert (venv / "etc/jupyter/jupyter_server_config.d/jupyter_tfgpu.json").is_file()
    _wait_for(server, lambda: server.request("GET", "tfgpu/api/status").json()["available"])
    status = server.request("GET", "tfgpu/api/status").json()
    assert status["backend"] == "simulated"
    assert status["versions"]["extension"] == version()
    assert server.request("GET", "tfgpu/api/gpus").status_code == 200


def test_a_kernel_of_the_installed_server_runs_the_installed_bootstrap(installed):
    """A notebook's kernel starts with its policy, and the bootstrap and %tfgpu it loads are
    the venv's."""
    server, venv = installed
    body = {"path": "a.ipynb", "name": "a.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    answer = server.request("POST", "api/sessions", json=body)
    assert answer.status_code == 201, answer.text
    kernel_id = answer.json()["kernel"]["id"]
    view = server.request("GET", f"tfgpu/api/kernels/{kernel_id}").json()
    assert view["provisioner"] == "TFGPUProvisioner" and view["applied"] is not None
    client = BlockingKernelClient()
    client.load_connection_file(server.runtime / f"kernel-{kernel_id}.json")
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        printed: list[str] = []

        def on_output(msg):
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])

        code = (
            "import json, os, tfgpu_bootstrap\n"
            "print(json.dumps({'bootstrap': tfgpu_bootstrap.__file__,"
            " 'policy': bool(os.environ.get('TFGPU_POLICY')),"
            " 'magic': 'tfgpu' in get_ipython().magics_manager.magics['line']}))"
        )
        reply = client.execute_interactive(code, output_hook=on_output, timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
        server.request("DELETE", f"api/kernels/{kernel_id}")
    found = json.loads("".join(printed).strip().splitlines()[-1])
    assert found["bootstrap"].startswith(str(venv)), found
    assert found["policy"] is True and found["magic"] is True

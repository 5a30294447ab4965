"""A caps file at start: real ``jupyter server`` processes, which stop on a caps file they cannot
use (fail closed) unless told to warn, and which layer it between the config and the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.kernel_helpers import poll
from tests.server_process import Servers, critical_lines

# As a non-root test user, the server runs "as another user" than the caps file's owner (as a
# server under its own account does): the test user owns every file made here.
AS_ANOTHER_USER = [
    "-c",
    "import os, sys\n"
    "import jupyter_tfgpu.server.caps_file as f\n"
    "f.server_uid = lambda: os.geteuid() + 1\n"
    "from jupyter_server.serverapp import main\n"
    "sys.exit(main())\n",
]


@pytest.fixture
def server_in(tmp_path):
    """Make servers in tmp_path; stop whatever still runs at the end."""
    with Servers(tmp_path) as make:

        def server(args, **kwargs):
            launcher = None if os.geteuid() == 0 else AS_ANOTHER_USER
            return make(args, launcher=launcher, **kwargs)

        yield server


@pytest.fixture
def caps_path(tmp_path) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    return folder / "tfgpu-caps.json"


def write(path: Path, data, mode: int = 0o644) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize(
    "content, mode, said",
    [
        ({"max_memory_mb": 20480, "enforcement": "kill"}, 0o644, "TFGPU.enforcement in {path}"),
        ({"max_memory_mb": 20480}, 0o664, "chmod go-w {path}"),
        (None, 0o644, "{path}: there is no such file"),
    ],
    ids=["wrong value", "others can write it", "missing"],
)
def test_a_caps_file_that_cannot_be_used_stops_the_server(server_in, caps_path, content, mode, said):
    # Given a caps file with a wrong value, or one others can write, or none where it is named
    if content is not None:
        write(caps_path, content, mode)
    server = server_in([f"--TFGPU.caps_file={caps_path}"])
    # When the server starts
    status = server.start().exit_status()
    # Then it stops before serving, and says why
    assert status != 0
    assert any(said.format(path=caps_path) in line for line in critical_lines(server.text()))
    assert "is running at" not in server.text()


def test_with_the_opt_out_it_starts_without_the_file_and_takes_it_once_fixed(server_in, caps_path):
    # Given a caps file with a mistake, and on_config_error=warn
    write(caps_path, {"max_memory_mb": "20 GiB"})
    server = server_in(
        [f"--TFGPU.caps_file={caps_path}", "--TFGPU.max_memory_mb=8192"],
        env={"TFGPU_ON_CONFIG_ERROR": "warn"},
    )
    # When the server starts
    server.start().wait_until_serving()
    config = server.get("tfgpu/api/config")
    # Then it runs with the caps it has without the file, and lists the file's problem
    assert config["max_memory_mb"] == 8192 and config["caps_file"]["in_force"] is False
    assert [(p["setting"], p["file"]) for p in config["problems"]] == [("TFGPU.max_memory_mb", str(caps_path))]
    # When the admin fixes the file (here: without the command line's setting)
    write(caps_path, {"max_threads": 4})

    async def fixed():
        now = server.get("tfgpu/api/config")
        return now if now["caps_file"]["in_force"] else None

    config = asyncio.run(poll(fixed, timeout=30))
    # Then it is in force, and the problem is gone
    assert config["max_threads"] == 4 and config["problems"] == []


def test_the_file_wins_over_the_config_files_and_the_command_line_over_the_file(server_in, caps_path):
    # Given a cap in a config file, in the caps file, and on the command line, and the rules in
    # the config file and the caps file only
    write(caps_path, {"max_memory_mb": 20480, "max_threads": 4, "enforcement": "restart"})
    config_file = "c.TFGPU.max_memory_mb = 40960\nc.TFGPU.enforcement = 'warn'\nc.TFGPU.max_threads = 16\n"
    server = server_in(
        [f"--TFGPU.caps_file={caps_path}", "--TFGPU.max_memory_mb=10240"],
        files={"jupyter_server_config.py": config_file},
    )
    # When the server starts
    server.start().wait_until_serving()
    config = server.get("tfgpu/api/config")
    # Then the command line's cap holds, and the file's other settings beat the config file's
    assert config["max_memory_mb"] == 10240
    assert config["max_threads"] == 4 and config["enforcement"]["action"] == "restart"
    assert config["caps_file"]["overridden"] == ["max_memory_mb"]
    assert config["caps_file"]["settings"] == ["max_threads", "enforcement"]
    # And the log says so: the setting given twice, and the caps in force in one line
    log = server.text().splitlines()
    assert any(
        line.startswith("[W ") and "max_memory_mb in the caps file" in line and "the command line wins" in line
        for line in log
    )
    caps = [line for line in log if "caps in force" in line]
    assert len(caps) == 1 and "max_memory_mb=10240" in caps[0]
    assert f"caps file {caps_path}: max_threads, enforcement from it" in caps[0]

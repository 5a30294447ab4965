"""Policy keys are one-to-one with notebook files: names that look alike but are two files on
disk (a backslash or a slash, composed or decomposed accents) keep two policies, through the
REST API and at a kernel's start.

Real server, real kernels, the simulated backend.
"""

from __future__ import annotations

import json
import unicodedata
from urllib.parse import quote

import pytest

from tests.kernel_helpers import run_json, start_session

NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
READ_POLICY = "import json, os; print(json.dumps(json.loads(os.environ['TFGPU_POLICY'])))"
NFC = unicodedata.normalize("NFC", "café/résumé.ipynb")
NFD = unicodedata.normalize("NFD", "café/résumé.ipynb")


@pytest.fixture
def tfgpu_config(tmp_path):
    """The simulated backend and a store of the test's own."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "policy_store_path": str(tmp_path / "state" / "policies.json"),
    }


async def call(http_server_client, jp_auth_header, jp_base_url, method, path, body=None):
    """A request on policies/{path}, each segment percent-encoded as a browser would."""
    raw = "/".join(quote(part, safe="") for part in path.split("/"))
    response = await http_server_client.fetch(
        f"{jp_base_url}tfgpu/api/policies/{raw}",
        method=method,
        headers=jp_auth_header,
        body=json.dumps(body) if body is not None else None,
        raise_error=False,
    )
    return response.code, json.loads(response.body) if response.body else None


@pytest.mark.parametrize(
    "first,second", [("d\\n.ipynb", "d/n.ipynb"), (NFD, NFC)], ids=["backslash", "nfd-nfc"]
)
async def test_look_alike_names_keep_their_own_policies(
    http_server_client, jp_auth_header, jp_base_url, first, second
):
    """A PUT for one name is never read back for the other."""
    # Given a policy put for the first name
    args = (http_server_client, jp_auth_header, jp_base_url)
    code, put = await call(*args, "PUT", first, body={"memory_growth": False})
    assert code == 200

    # When both names are read back
    _, got_first = await call(*args, "GET", first)
    _, got_second = await call(*args, "GET", second)

    # Then each is keyed as it was spelled, and only the first has a policy
    assert put["notebook"] == got_first["notebook"] == first
    assert got_first["policy"] == {"memory_growth": False}
    assert got_second["notebook"] == second
    assert got_second["policy"] is None


async def test_a_kernel_gets_the_policy_of_its_own_file(
    http_server_client, jp_auth_header, jp_base_url, jp_fetch, jp_serverapp, jp_root_dir
):
    """Notebooks 'd\\n.ipynb' (in the root) and 'd/n.ipynb': each kernel gets its own policy."""
    # Given both notebooks, and a policy for 'd/n.ipynb' only
    (jp_root_dir / "d").mkdir()
    (jp_root_dir / "d" / "n.ipynb").write_text(json.dumps(NOTEBOOK))
    (jp_root_dir / "d\\n.ipynb").write_text(json.dumps(NOTEBOOK))
    args = (http_server_client, jp_auth_header, jp_base_url)
    assert (await call(*args, "PUT", "d/n.ipynb", body={"memory_limit_mb": 1024}))[0] == 200

    # When each is opened
    backslash = await start_session(jp_fetch, "d\\n.ipynb")
    slash = await start_session(jp_fetch, "d/n.ipynb")
    in_root = await run_json(jp_serverapp, backslash["kernel"]["id"], READ_POLICY)
    in_folder = await run_json(jp_serverapp, slash["kernel"]["id"], READ_POLICY)

    # Then the one in the folder has the policy, the one in the root does not
    assert (in_folder["notebook"], in_folder["memory_limit_mb"]) == ("d/n.ipynb", 1024)
    assert (in_root["notebook"], in_root["memory_limit_mb"]) == ("d\\n.ipynb", None)


async def test_a_backslash_is_part_of_a_name_on_posix(http_server_client, jp_auth_header, jp_base_url):
    """'..\\x.ipynb' is a file in the root on POSIX, not a way out of it: it has a policy."""
    # Given / When
    code, put = await call(
        http_server_client, jp_auth_header, jp_base_url, "PUT", "..\\x.ipynb", body={"devices": []}
    )

    # Then
    assert (code, put["notebook"]) == (200, "..\\x.ipynb")

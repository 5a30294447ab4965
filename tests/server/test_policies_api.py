"""The policies, kernels and config REST contract, through a real jupyter_server."""

from __future__ import annotations

import json
import unicodedata
from importlib.resources import files
from urllib.parse import quote

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from jupyter_tfgpu.gpu.simulated import simulated_uuid
from jupyter_tfgpu.policy.model import policy_field_names
from tests.kernel_helpers import poll

SPEC = OpenAPI.from_dict(
    yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
)
GPU_NAME = "Simulated GPU 16GB"
UUID0, UUID1 = simulated_uuid(GPU_NAME, 0), simulated_uuid(GPU_NAME, 1)
FIELDS = ("memory_growth", "memory_limit_mb", "devices", "allocator")  # set by the round trip
NO_SOURCES = dict.fromkeys(policy_field_names())
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
FOLDER = b"<a folder where the store file should be>"  # store_content: make the path a folder


@pytest.fixture
def caps() -> dict:
    """Admin settings for one test; parametrize ``caps`` to set some."""
    return {}


@pytest.fixture
def store_content() -> bytes | None:
    """What the policy store file holds before the server starts; None for no file."""
    return None


@pytest.fixture
def store_path(tmp_path, store_content):
    """The policy store file of this test's server."""
    path = tmp_path / "state" / "policies.json"
    if store_content == FOLDER:
        path.mkdir(parents=True)
    elif store_content is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store_content)
    return path


@pytest.fixture
def tfgpu_config(store_path, caps):
    """The simulated backend with its two GPUs, a store file of the test's own, and ``caps``."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "history_seconds": 60,
        "policy_store_path": str(store_path),
        **caps,
    }


@pytest.fixture
def jp_server_config(jp_server_config):
    """Let the contents API delete folders outright (no desktop trash in a test)."""
    return {
        **jp_server_config,
        "FileContentsManager": {"delete_to_trash": False, "always_delete_dir": True},
    }


def spec_path(*parts: str) -> str:
    """The request path the spec sees; a notebook path's '/' travels as %2F."""
    head, *rest = parts
    return "/tfgpu/api/" + "/".join([head] + [quote(p, safe="") for p in rest])


async def call(jp_fetch, method: str, *parts: str, body=None, validate: bool = True):
    """Send a request under ``tfgpu/api/``; return (status, decoded JSON or None).

    Every answer is checked against the shipped OpenAPI spec unless ``validate`` is False.
    """
    kwargs = {"method": method, "raise_error": False}
    if method in ("PUT", "POST", "PATCH"):
        kwargs["body"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
    response = await jp_fetch("tfgpu", "api", *parts, **kwargs)
    if validate:
        check_spec(method, spec_path(*parts), response)
    data = json.loads(response.body) if response.body else None
    return response.code, data


def check_spec(method: str, path: str, response) -> None:
    """The response is one the spec documents for this operation and status."""
    request = MockRequest("http://localhost", method.lower(), path)
    if response.code == 204:
        assert not response.body
        content_type = None
    else:
        assert response.headers["Content-Type"].startswith("application/json")
        content_type = "application/json"
    SPEC.validate_response(
        request,
        MockResponse(response.body or b"", status_code=response.code, content_type=content_type),
    )




async def stored(jp_fetch) -> dict:
    """Every stored policy, as GET policies lists them."""
    code, data = await call(jp_fetch, "GET", "policies")
    assert code == 200
    return data["policies"]


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["nb.ipynb", "projects/vision/train model.ipynb", "données/日本語.ipynb"],
    ids=["root", "nested", "non-ascii"],
)
async def test_put_get_delete_round_trip(jp_fetch, store_path, path):
    """A policy put is served back, listed, written to the store, and gone after DELETE."""
    # Given a policy
    policy = {
        "memory_growth": True,
        "memory_limit_mb": 4096,
        "devices": [1],
        "allocator": "cuda_malloc_async",
    }

    # When it is put
    code, put = await call(jp_fetch, "PUT", "policies", path, body=policy)

    # Then the answer, a GET and the list all show it, and the store file holds it
    assert code == 200
    assert put == {
        "notebook": path,
        "policy": policy,
        "effective": {**NO_SOURCES, **policy, "sources": {**NO_SOURCES, **dict.fromkeys(FIELDS, "notebook")}},
        "revision": 1,
    }
    assert await call(jp_fetch, "GET", "policies", path) == (200, put)
    assert await stored(jp_fetch) == {path: policy}
    assert json.loads(store_path.read_text(encoding="utf-8"))["policies"] == {path: policy}

    # When it is deleted
    code, body = await call(jp_fetch, "DELETE", "policies", path)

    # Then it is gone and the notebook has no policy of its own again
    assert (code, body) == (204, None)
    code, after = await call(jp_fetch, "GET", "policies", path)
    assert (code, after["policy"]) == (200, None)
    assert await stored(jp_fetch) == {}


async def test_a_put_replaces_the_whole_policy(jp_fetch):
    """PUT is a replace: fields left out of the second PUT are gone."""
    # Given a stored policy with two fields
    first = {"memory_growth": True, "memory_limit_mb": 100}
    await call(jp_fetch, "PUT", "policies", "nb.ipynb", body=first)

    # When a second PUT sets another field only
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"allocator": "default"})

    # Then only that field is stored
    assert code == 200
    assert data["policy"] == {"allocator": "default"}
    assert data["effective"]["memory_limit_mb"] is None


async def test_the_list_shows_every_notebook(jp_fetch):
    """GET policies lists each stored notebook policy, with the default and no problems."""
    # Given three notebooks with policies
    paths = {
        "a.ipynb": {"memory_growth": True},
        "x/b.ipynb": {"devices": []},
        "x/y/c.ipynb": {"devices": [UUID0]},
    }
    for path, policy in paths.items():
        assert (await call(jp_fetch, "PUT", "policies", path, body=policy))[0] == 200

    # When
    code, data = await call(jp_fetch, "GET", "policies")

    # Then
    assert code == 200
    assert data == {"policies": paths, "default": {}, "problems": []}


async def test_paths_are_normalized_to_one_key(jp_fetch):
    """Doubled slashes and './' name the same notebook; the name is kept as spelled (an NFD
    name is another file than its NFC look-alike: tests/server/test_policy_keys.py)."""
    # Given a policy put under an NFD spelling with extra separators
    nfd = unicodedata.normalize("NFD", "café/./résumé.ipynb")
    code, put = await call(jp_fetch, "PUT", "policies", nfd, body={"memory_growth": False})
    key = unicodedata.normalize("NFD", "café/résumé.ipynb")

    # When it is read back without the extra separators
    code, got = await call(jp_fetch, "GET", "policies", key)

    # Then it is the same policy, under the NFD key
    assert put["notebook"] == got["notebook"] == key
    assert got["policy"] == {"memory_growth": False}
    assert list(await stored(jp_fetch)) == [key]


async def test_a_gpu_named_by_uuid_is_accepted(jp_fetch):
    """The simulated GPUs' UUIDs are valid devices."""
    # Given / When
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"devices": [UUID1, 0]})

    # Then
    assert code == 200
    assert data["effective"]["devices"] == [UUID1, 0]


# -- bad input ----------------------------------------------------------------------------------

BAD_BODIES = {
    "limit-text": ({"memory_limit_mb": "abc"}, "memory_limit_mb"),
    "limit-zero": ({"memory_limit_mb": 0}, "memory_limit_mb"),
    "limit-fraction": ({"memory_limit_mb": 1.5}, "memory_limit_mb"),
    "devices-duplicates": ({"devices": [0, 0]}, "devices"),
    "device-bad-item": ({"devices": ["gpu0"]}, "devices[0]"),
    "device-unknown-index": ({"devices": [0, 2]}, "devices[1]"),
    "device-unknown-uuid": ({"devices": [simulated_uuid(GPU_NAME, 2)]}, "devices[0]"),
    "allocator-unknown": ({"allocator": "fast"}, "allocator"),
    "unknown-field": ({"memory_grow": True}, "memory_grow"),
    "not-json": ("{memory_growth: true", "body"),
    "empty-body": ("", "policy"),
    "json-list": ([{"memory_growth": True}], "policy"),
}


@pytest.mark.parametrize("body,field", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_input_is_a_400_naming_the_field(jp_fetch, body, field):
    """Each bad body answers 400 with a JSON message that names the field; nothing is stored."""
    # Given / When
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body=body)

    # Then
    assert code == 400
    assert data["message"].startswith(f"{field}: ")
    assert await stored(jp_fetch) == {}


async def request_raw(http_server_client, jp_auth_header, jp_base_url, method, raw_path, body=None):
    """Send a request with a path exactly as written (no client-side escaping)."""
    return await http_server_client.fetch(
        f"{jp_base_url}tfgpu/api/policies/{raw_path}",
        method=method,
        headers=jp_auth_header,
        body=body,
        raise_error=False,
    )


TRAVERSALS = {
    "dotdot": "../escape.ipynb",
    "nested-dotdot": "a/../../escape.ipynb",
    "encoded-dotdot": "%2E%2E/escape.ipynb",
    "encoded-slash": "..%2Fescape.ipynb",
    "encoded-all": "a%2F%2E%2E%2F%2E%2E%2Fescape.ipynb",
    "nul": "a%00b.ipynb",
    "only-dots": "%2E",
}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("raw_path", TRAVERSALS.values(), ids=TRAVERSALS.keys())
async def test_paths_outside_the_root_are_a_400(
    http_server_client, jp_auth_header, jp_base_url, jp_fetch, method, raw_path
):
    """'..' segments (plain or percent-encoded), NUL and the root itself are refused with 400."""
    # Given / When
    body = json.dumps({"memory_growth": True}) if method == "PUT" else None
    response = await request_raw(
        http_server_client, jp_auth_header, jp_base_url, method, raw_path, body
    )

    # Then
    assert response.code == 400, response.body
    assert json.loads(response.body)["message"].startswith("path: ")
    check_spec(method, "/tfgpu/api/policies/x", response)
    assert await stored(jp_fetch) == {}


# -- defaults and caps --------------------------------------------------------------------------

DEFAULTS = {"default_policy": {"memory_growth": True, "memory_limit_mb": 2048}}


@pytest.mark.parametrize("caps", [DEFAULTS], ids=["default-policy"])
async def test_a_notebook_without_a_policy_gets_the_default(jp_fetch):
    """No policy of its own: policy null, effective from default_policy, listed as the default."""
    # Given a server with a default policy and no stored policies
    # When
    code, data = await call(jp_fetch, "GET", "policies", "untouched.ipynb")
    _, listing = await call(jp_fetch, "GET", "policies")

    # Then
    assert code == 200
    assert data == {
        "notebook": "untouched.ipynb",
        "policy": None,
        "effective": {
            **NO_SOURCES,
            "memory_growth": True,
            "memory_limit_mb": 2048,
            "sources": {**NO_SOURCES, "memory_growth": "default", "memory_limit_mb": "default"},
        },
        "revision": 0,
    }
    assert listing == {"policies": {}, "default": DEFAULTS["default_policy"], "problems": []}


@pytest.mark.parametrize("caps", [DEFAULTS], ids=["default-policy"])
async def test_a_notebook_policy_overrides_the_default_field_by_field(jp_fetch):
    """The notebook's fields win; the default fills in the rest."""
    # Given / When
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"memory_growth": False})

    # Then
    assert code == 200
    effective = data["effective"]
    sources = effective["sources"]
    assert (effective["memory_growth"], sources["memory_growth"]) == (False, "notebook")
    assert (effective["memory_limit_mb"], sources["memory_limit_mb"]) == (2048, "default")


CAPS = {
    "max-memory": ({"max_memory_mb": 1024}, {"memory_limit_mb": 2048}, "max_memory_mb"),
    "allowed-index": ({"allowed_devices": [0]}, {"devices": [1]}, "allowed_devices"),
    "allowed-uuid": ({"allowed_devices": [UUID0]}, {"devices": [UUID1]}, "allowed_devices"),
    "allowed-mixed": ({"allowed_devices": [0]}, {"devices": [0, UUID1]}, "allowed_devices"),
    "force-growth": (
        {"force_memory_growth": True},
        {"memory_growth": False},
        "force_memory_growth",
    ),
    "no-user-policies": (
        {"allow_user_policies": False},
        {"memory_growth": True},
        "allow_user_policies",
    ),
}


@pytest.mark.parametrize("caps,body,cap", CAPS.values(), ids=CAPS.keys())
async def test_requests_beyond_a_cap_are_a_403_naming_it(jp_fetch, body, cap):
    """A policy over an admin cap answers 403 with the cap's name; nothing is stored."""
    # Given a server with the cap set
    # When
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body=body)

    # Then
    assert code == 403
    assert f"TFGPU.{cap}" in data["message"]
    assert cap in data["reason"]
    assert await stored(jp_fetch) == {}


WITHIN = {
    "max-memory": ({"max_memory_mb": 1024}, {"memory_limit_mb": 512}, "memory_limit_mb", 512),
    "allowed-index": ({"allowed_devices": [0]}, {"devices": [UUID0]}, "devices", [UUID0]),
    "allowed-cpu": ({"allowed_devices": [0]}, {"devices": []}, "devices", []),
    "force-growth": ({"force_memory_growth": True}, {"memory_growth": True}, "memory_growth", True),
}


@pytest.mark.parametrize("caps,body,field,value", WITHIN.values(), ids=WITHIN.keys())
async def test_requests_within_the_caps_are_stored(jp_fetch, body, field, value):
    """A policy inside the caps is stored and is what the kernel gets."""
    # Given / When
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body=body)

    # Then
    assert code == 200
    assert data["effective"][field] == value
    assert data["effective"]["sources"][field] == "notebook"


CLAMPS = {
    "max-memory": ({"max_memory_mb": 1024}, "memory_limit_mb", 1024),
    "allowed-devices": ({"allowed_devices": [1]}, "devices", [UUID1]),
    "force-growth": ({"force_memory_growth": True}, "memory_growth", True),
}


@pytest.mark.parametrize("caps,field,value", CLAMPS.values(), ids=CLAMPS.keys())
async def test_caps_apply_to_notebooks_without_a_policy(jp_fetch, field, value):
    """A notebook with no policy still runs under the caps (source 'cap')."""
    # Given / When
    code, data = await call(jp_fetch, "GET", "policies", "untouched.ipynb")

    # Then
    assert code == 200
    assert data["effective"][field] == value
    assert data["effective"]["sources"][field] == "cap"


STORED_BEFORE = json.dumps(
    {"version": 1, "policies": {"old.ipynb": {"memory_growth": False}}}
).encode()
NO_USER_POLICIES = {"allow_user_policies": False, **DEFAULTS}


@pytest.mark.parametrize("store_content", [STORED_BEFORE], ids=["one-policy"])
@pytest.mark.parametrize("caps", [NO_USER_POLICIES], ids=["no-user-policies"])
async def test_without_user_policies_stored_ones_are_ignored_and_kept(jp_fetch):
    """allow_user_policies=False: stored policies stay listed but only the default applies."""
    # Given a store with a policy written before the admin turned user policies off
    # When
    code, data = await call(jp_fetch, "GET", "policies", "old.ipynb")
    delete_code, delete = await call(jp_fetch, "DELETE", "policies", "old.ipynb")

    # Then the notebook runs with the default, and users cannot remove the policy either
    assert code == 200
    assert data["policy"] == {"memory_growth": False}
    assert data["effective"]["memory_growth"] is True
    assert data["effective"]["sources"]["memory_growth"] == "default"
    assert delete_code == 403
    assert "TFGPU.allow_user_policies" in delete["message"]
    assert await stored(jp_fetch) == {"old.ipynb": {"memory_growth": False}}


async def test_deleting_a_missing_policy_is_a_404(jp_fetch):
    """DELETE of a notebook without a policy answers 404 with a JSON message."""
    # Given / When
    code, data = await call(jp_fetch, "DELETE", "policies", "never-set.ipynb")

    # Then
    assert code == 404
    assert "never-set.ipynb" in data["message"]


ALL_CAPS = {
    "max_memory_mb": 4096,
    "allowed_devices": [0, UUID1],
    "force_memory_growth": True,
    "allow_user_policies": False,
    "default_policy": {"allocator": "cuda_malloc_async"},
}
NO_CAPS = {
    "max_memory_mb": None,
    "allowed_devices": None,
    "force_memory_growth": False,
    "allow_user_policies": True,
    "default_policy": {},
}
CONFIGS = {"none": ({}, NO_CAPS), "all": (ALL_CAPS, ALL_CAPS)}


@pytest.mark.parametrize("caps,shown", CONFIGS.values(), ids=CONFIGS.keys())
async def test_config_shows_the_caps(jp_fetch, shown):
    """GET config shows the defaults and caps in force under their config names."""
    # Given / When
    code, data = await call(jp_fetch, "GET", "config")

    # Then
    assert code == 200
    assert {k: data[k] for k in shown} == shown
    assert data["backend"] == "simulated"
    assert data["sample_interval"] == 0.2


# -- policies follow the notebooks --------------------------------------------------------------


def make_notebook(root, path: str) -> None:
    """Create an empty notebook file under the server root."""
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(NOTEBOOK), encoding="utf-8")


async def contents(jp_fetch, method: str, path: str, body=None):
    """Call jupyter_server's own contents API."""
    kwargs = {"method": method}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    return await jp_fetch("api", "contents", *path.split("/"), **kwargs)


async def test_renaming_a_notebook_moves_its_policy(jp_fetch, jp_root_dir):
    """A notebook renamed through the contents API keeps its policy under the new name."""
    # Given a notebook with a policy
    make_notebook(jp_root_dir, "work/nb.ipynb")
    await call(jp_fetch, "PUT", "policies", "work/nb.ipynb", body={"memory_limit_mb": 300})

    # When it is renamed
    await contents(jp_fetch, "PATCH", "work/nb.ipynb", {"path": "work/renamed.ipynb"})

    # Then its policy follows
    async def moved():
        return await stored(jp_fetch) == {"work/renamed.ipynb": {"memory_limit_mb": 300}}

    await poll(moved, timeout=5.0)
    code, data = await call(jp_fetch, "GET", "policies", "work/renamed.ipynb")
    assert data["policy"] == {"memory_limit_mb": 300}


async def test_renaming_a_folder_moves_the_policies_inside(jp_fetch, jp_root_dir):
    """A folder renamed through the contents API takes its notebooks' policies along."""
    # Given two notebooks in a folder and one beside it, all with policies
    for path in ("team/a.ipynb", "team/sub/b.ipynb", "team-other.ipynb"):
        make_notebook(jp_root_dir, path)
        await call(jp_fetch, "PUT", "policies", path, body={"memory_growth": True})

    # When the folder is renamed
    await contents(jp_fetch, "PATCH", "team", {"path": "renamed-team"})

    # Then the policies inside moved and the one beside it did not
    async def moved():
        return set(await stored(jp_fetch)) == {
            "renamed-team/a.ipynb",
            "renamed-team/sub/b.ipynb",
            "team-other.ipynb",
        }

    await poll(moved, timeout=5.0)


async def test_deleting_a_notebook_removes_its_policy(jp_fetch, jp_root_dir):
    """A notebook deleted through the contents API takes its policy with it."""
    # Given two notebooks with policies
    for path in ("gone.ipynb", "kept.ipynb"):
        make_notebook(jp_root_dir, path)
        await call(jp_fetch, "PUT", "policies", path, body={"devices": []})

    # When one is deleted
    await contents(jp_fetch, "DELETE", "gone.ipynb")

    # Then only its policy is gone
    async def removed():
        return set(await stored(jp_fetch)) == {"kept.ipynb"}

    await poll(removed, timeout=5.0)


async def test_deleting_a_folder_removes_the_policies_inside(jp_fetch, jp_root_dir):
    """A folder deleted through the contents API takes its notebooks' policies with it."""
    # Given notebooks with policies inside a folder and beside it
    for path in ("old/a.ipynb", "old/deep/b.ipynb", "older.ipynb"):
        make_notebook(jp_root_dir, path)
        await call(jp_fetch, "PUT", "policies", path, body={"devices": [0]})

    # When the folder is deleted
    await contents(jp_fetch, "DELETE", "old")

    # Then only the policies inside it are gone
    async def removed():
        return set(await stored(jp_fetch)) == {"older.ipynb"}

    await poll(removed, timeout=5.0)


# -- the store file -----------------------------------------------------------------------------


@pytest.mark.parametrize("store_content", [b"\x00\xffnot a policy store"], ids=["garbage"])
async def test_a_corrupt_store_is_moved_aside_and_reported(jp_fetch, store_path, store_content):
    """A store file that cannot be read is kept for the admin and shown under problems."""
    # Given a server started over a corrupt store file
    # When the policies are listed
    code, data = await call(jp_fetch, "GET", "policies")

    # Then the list is empty, the problem names both files, and the bytes are kept intact
    assert code == 200
    assert data["policies"] == {}
    [problem] = data["problems"]
    assert problem["file"] == str(store_path)
    assert problem["moved_to"].startswith(f"{store_path}.corrupt-")
    with open(problem["moved_to"], "rb") as kept:
        assert kept.read() == store_content
    # and policies can be set again; the problem stays reported until an admin acts
    assert (await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"devices": []}))[0] == 200
    _, again = await call(jp_fetch, "GET", "policies")
    assert again["policies"] == {"nb.ipynb": {"devices": []}}
    assert again["problems"] == data["problems"]


@pytest.mark.parametrize("store_content", [FOLDER], ids=["folder"])
async def test_a_store_that_cannot_be_read_is_reported_and_refuses_writes(jp_fetch, store_path):
    """The store path is a folder: the server serves, says why, and writes answer 503."""
    # Given a server started with a folder where the store file should be
    # When the policies are listed, one notebook's is read, set and removed
    code, listing = await call(jp_fetch, "GET", "policies")
    get_code, one = await call(jp_fetch, "GET", "policies", "nb.ipynb")
    put_code, put = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body={"devices": []})
    delete_code, delete = await call(jp_fetch, "DELETE", "policies", "nb.ipynb")

    # Then reads answer with the admin default, the problem is listed, writes say why
    assert (code, get_code, put_code, delete_code) == (200, 200, 503, 503)
    assert listing["policies"] == {}
    [problem] = listing["problems"]
    assert problem["file"] == str(store_path)
    assert problem["moved_to"] is None
    assert "IsADirectoryError" in problem["error"]
    assert one["policy"] is None
    for answer in (put, delete):
        assert answer["reason"] == "policy store unavailable"
        assert str(store_path) in answer["message"] and "IsADirectoryError" in answer["message"]
    # and the folder is left as it was
    assert store_path.is_dir() and list(store_path.iterdir()) == []


async def test_whole_number_floats_are_stored_as_integers(jp_fetch, store_path):
    """2.0 is an integer to JSON Schema; it is stored, served and rendered as 2."""
    # Given / When a policy with whole-number floats in integer fields
    body = (
        '{"devices": "auto", "gpu_count": 2.0, "intra_op_threads": 4.0, "memory_limit_mb": 1024.0}'
    )
    code, data = await call(jp_fetch, "PUT", "policies", "nb.ipynb", body=body)

    # Then it is stored and served as integers
    expected = {"devices": "auto", "gpu_count": 2, "intra_op_threads": 4, "memory_limit_mb": 1024}
    assert code == 200
    assert data["policy"] == expected
    assert all(type(data["policy"][k]) is int for k in ("gpu_count", "intra_op_threads"))
    on_disk = json.loads(store_path.read_text(encoding="utf-8"))["policies"]["nb.ipynb"]
    assert on_disk == expected
    assert "2.0" not in store_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("store_content", [STORED_BEFORE], ids=["one-policy"])
async def test_policies_stored_before_the_server_started_are_served(jp_fetch):
    """The store outlives the server: what it holds at start is what GET shows."""
    # Given / When
    code, data = await call(jp_fetch, "GET", "policies", "old.ipynb")

    # Then
    assert code == 200
    assert data["policy"] == {"memory_growth": False}


# -- kernels ------------------------------------------------------------------------------------


async def test_kernels_list_validates_against_the_spec(jp_fetch):
    """GET kernels answers the documented list (empty here); an unknown id is a 404."""
    # Given a server without kernels
    # When
    code, data = await call(jp_fetch, "GET", "kernels")
    missing_code, missing = await call(jp_fetch, "GET", "kernels", "no-such-kernel")

    # Then
    assert (code, data) == (200, {"kernels": []})
    assert missing_code == 404
    assert "no-such-kernel" in missing["message"]


async def test_a_running_kernel_is_described_as_the_spec_says(jp_fetch, jp_root_dir):
    """A kernel started for a notebook with a policy is listed with that notebook and policy."""
    # Given a notebook with a policy and a session (kernel) for it
    make_notebook(jp_root_dir, "k/nb.ipynb")
    policy = {"memory_growth": True, "devices": [1]}
    await call(jp_fetch, "PUT", "policies", "k/nb.ipynb", body=policy)
    response = await jp_fetch(
        "api", "sessions", method="POST",
        body=json.dumps({"path": "k/nb.ipynb", "type": "notebook", "kernel": {"name": "python3"}}),
    )
    kernel_id = json.loads(response.body)["kernel"]["id"]
    try:
        # When the kernels are listed and the one kernel is asked for
        code, listing = await call(jp_fetch, "GET", "kernels")
        one_code, one = await call(jp_fetch, "GET", "kernels", kernel_id)

        # Then both describe it with its notebook and effective policy
        assert (code, one_code) == (200, 200)
        assert [k["id"] for k in listing["kernels"]] == [kernel_id]
        assert one["notebook"] == "k/nb.ipynb"
        assert one["policy"]["memory_growth"] is True
        assert one["policy"]["devices"] == [1]
        assert one["restart_required"] is False
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")

"""The policy model: validation, the effective policy under admin caps, and the kernel env."""

from __future__ import annotations

import json
import logging
import os

import pytest

from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.gpu import DeviceInfo, MigInstance
from jupyter_tfgpu.policy import (
    AdminPolicy,
    CapExceeded,
    PolicyError,
    PolicyService,
    PolicyStore,
    policy_schema,
    render_env,
    validate_policy,
)
from jupyter_tfgpu.policy.model import policy_field_names
from jupyter_tfgpu.policy.environment import POLICY_VARIABLES

GIB = 2**30
UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
UUID1 = "GPU-11111111-2222-3333-4444-555555555555"
MIG0 = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

# A 16 GiB GPU split into one 10 GiB MIG slice, and a whole 8 GiB GPU.
DEVICES = [
    DeviceInfo(
        index=0,
        uuid=UUID0,
        name="NVIDIA A100 16GB",
        memory_total=16 * GIB,
        mig_mode=True,
        mig_instances=(MigInstance(0, MIG0, 1, 0, 10 * GIB),),
    ),
    DeviceInfo(index=1, uuid=UUID1, name="NVIDIA T4 8GB", memory_total=8 * GIB),
]

NO_SOURCES = dict.fromkeys(policy_field_names())  # every field of the one policy schema


# -- validation ---------------------------------------------------------------------------------

BAD_POLICIES = {
    "limit-text": ({"memory_limit_mb": "abc"}, "memory_limit_mb"),
    "limit-zero": ({"memory_limit_mb": 0}, "memory_limit_mb"),
    "limit-negative": ({"memory_limit_mb": -1}, "memory_limit_mb"),
    "limit-fraction": ({"memory_limit_mb": 1.5}, "memory_limit_mb"),
    "limit-bool": ({"memory_limit_mb": True}, "memory_limit_mb"),
    "growth-text": ({"memory_growth": "yes"}, "memory_growth"),
    "devices-duplicates": ({"devices": [0, 0]}, "devices"),
    "devices-not-a-list": ({"devices": "0"}, "devices"),
    "device-bad-item": ({"devices": [0, "nvidia0"]}, "devices[1]"),
    "device-negative": ({"devices": [-1]}, "devices[0]"),
    "device-bool": ({"devices": [True]}, "devices[0]"),
    "allocator-unknown": ({"allocator": "fast"}, "allocator"),
    "unknown-field": ({"memory_grow": True}, "memory_grow"),
    "not-an-object": ([{"memory_growth": True}], "policy"),
    "null": (None, "policy"),
}


@pytest.mark.parametrize("data,field", BAD_POLICIES.values(), ids=BAD_POLICIES.keys())
def test_validation_errors_name_the_field(data, field):
    """Each bad policy raises a PolicyError whose field and message name what is wrong."""
    # Given / When
    with pytest.raises(PolicyError) as err:
        validate_policy(data)

    # Then
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert err.value.message


def test_an_unknown_field_error_lists_the_known_ones():
    """A misspelt field says which fields exist."""
    # Given / When
    with pytest.raises(PolicyError) as err:
        validate_policy({"memory_grow": True})

    # Then
    assert "memory_growth" in err.value.message


@pytest.mark.parametrize(
    "devices,field",
    [([2], "devices[0]"), ([0, "GPU-99999999-0000-0000-0000-000000000000"], "devices[1]"),
     (["MIG-ffffffff-0000-0000-0000-000000000000"], "devices[0]")],
    ids=["index", "uuid", "mig-uuid"],
)
def test_unknown_gpus_are_refused_when_the_gpus_are_known(devices, field):
    """An index or UUID the server does not have is a 400 on that item."""
    # Given / When
    with pytest.raises(PolicyError) as err:
        validate_policy({"devices": devices}, DEVICES)

    # Then
    assert err.value.field == field
    assert "no GPU" in err.value.message


@pytest.mark.parametrize(
    "devices",
    [[0, 1], [UUID0], [UUID1, 0], [MIG0], []],
    ids=["indices", "uuid", "mixed", "mig", "cpu"],
)
def test_known_gpus_are_accepted(devices):
    """Indices, GPU UUIDs, MIG UUIDs of a known slice, and [] (CPU only) are all valid."""
    # Given / When
    policy = validate_policy({"devices": devices}, DEVICES)

    # Then
    assert policy == {"devices": devices}


def test_gpus_are_not_checked_when_unknown():
    """Without a backend the server cannot tell, so any well-formed device passes."""
    # Given / When / Then
    assert validate_policy({"devices": [7]}, None) == {"devices": [7]}


def test_a_server_without_gpus_refuses_every_device():
    """With no GPU at all, naming one says so."""
    # Given / When
    with pytest.raises(PolicyError) as err:
        validate_policy({"devices": [0]}, [])

    # Then
    assert err.value.field == "devices[0]"
    assert "no GPU" in err.value.message


def test_a_valid_policy_keeps_only_its_fields():
    """The validated policy is the fields the caller set, nulls included."""
    # Given
    data = {"memory_growth": True, "memory_limit_mb": 4096, "allocator": None}

    # When / Then
    assert validate_policy(data, DEVICES) == data


# -- the effective policy -----------------------------------------------------------------------


def test_effective_is_default_then_notebook():
    """The notebook's fields win over the default's; the rest comes from the default."""
    # Given an admin default and a notebook that overrides part of it
    admin = AdminPolicy(default={"memory_growth": True, "allocator": "cuda_malloc_async"})
    own = {"memory_growth": False, "memory_limit_mb": 2048}

    # When
    effective = admin.effective(own, DEVICES)

    # Then
    assert effective == {
        **dict.fromkeys(NO_SOURCES),
        "memory_growth": False,
        "memory_limit_mb": 2048,
        "allocator": "cuda_malloc_async",
        "sources": {
            **NO_SOURCES,
            "memory_growth": "notebook",
            "memory_limit_mb": "notebook",
            "allocator": "default",
        },
    }


def test_effective_without_anything_has_no_opinion():
    """No default, no notebook policy, no caps: every field null, no source."""
    # Given / When
    effective = AdminPolicy().effective(None, DEVICES)

    # Then
    assert effective == {**dict.fromkeys(NO_SOURCES), "sources": NO_SOURCES}


def test_null_fields_of_a_notebook_leave_the_default():
    """A notebook field set to null means 'no opinion', so the default applies."""
    # Given / When
    effective = AdminPolicy(default={"memory_limit_mb": 1024}).effective(
        {"memory_limit_mb": None}, DEVICES
    )

    # Then
    assert effective["memory_limit_mb"] == 1024
    assert effective["sources"]["memory_limit_mb"] == "default"


@pytest.mark.parametrize(
    "own,limit,source",
    [(None, 4096, "cap"), ({}, 4096, "cap"), ({"memory_limit_mb": 8192}, 4096, "cap"),
     ({"memory_limit_mb": 1024}, 1024, "notebook"), ({"memory_limit_mb": 4096}, 4096, "notebook")],
    ids=["no-policy", "empty", "larger", "smaller", "equal"],
)
def test_max_memory_clamps_the_limit(own, limit, source):
    """max_memory_mb gives kernels without a limit that limit, and lowers larger ones."""
    # Given / When
    effective = AdminPolicy(max_memory_mb=4096).effective(own, DEVICES)

    # Then
    assert effective["memory_limit_mb"] == limit
    assert effective["sources"]["memory_limit_mb"] == source


def test_max_memory_clamps_a_larger_default():
    """A default larger than the cap is clamped too."""
    # Given / When
    effective = AdminPolicy(default={"memory_limit_mb": 9000}, max_memory_mb=4096).effective(
        None, DEVICES
    )

    # Then
    assert (effective["memory_limit_mb"], effective["sources"]["memory_limit_mb"]) == (4096, "cap")


def test_a_limit_over_max_memory_is_refused():
    """check() refuses a limit over the cap and names max_memory_mb; equal is fine."""
    # Given
    admin = AdminPolicy(max_memory_mb=4096)

    # When
    with pytest.raises(CapExceeded) as err:
        admin.check({"memory_limit_mb": 4097}, DEVICES)
    admin.check({"memory_limit_mb": 4096}, DEVICES)
    admin.check({"memory_growth": True}, DEVICES)

    # Then
    assert err.value.cap == "max_memory_mb"
    assert "max_memory_mb" in str(err.value)
    assert isinstance(err.value, PermissionError)


@pytest.mark.parametrize("allowed", [(0,), (UUID0,)], ids=["by-index", "by-uuid"])
def test_allowed_devices_refuse_other_gpus(allowed):
    """A notebook naming a GPU outside allowed_devices (by index or UUID) is refused."""
    # Given
    admin = AdminPolicy(allowed_devices=allowed)

    # When
    refused = []
    for devices in ([1], [UUID1], [0, 1]):
        with pytest.raises(CapExceeded) as err:
            admin.check({"devices": devices}, DEVICES)
        refused.append(err.value.cap)

    # Then
    assert refused == ["allowed_devices"] * 3
    assert "allowed_devices" in str(err.value)


@pytest.mark.parametrize("allowed", [(0,), (UUID0,)], ids=["by-index", "by-uuid"])
@pytest.mark.parametrize("devices", [[0], [UUID0], [MIG0], []], ids=["index", "uuid", "mig", "cpu"])
def test_allowed_devices_accept_allowed_gpus(allowed, devices):
    """The allowed GPU by index or UUID, its MIG slices, and CPU only are all accepted."""
    # Given / When / Then
    AdminPolicy(allowed_devices=allowed).check({"devices": devices}, DEVICES)


@pytest.mark.parametrize("allowed", [(1,), (UUID1,)], ids=["by-index", "by-uuid"])
def test_allowed_devices_are_what_a_notebook_without_devices_sees(allowed):
    """No devices in default or notebook: the kernel sees exactly the allowed GPUs."""
    # Given / When
    effective = AdminPolicy(allowed_devices=allowed).effective({"memory_growth": True}, DEVICES)

    # Then
    assert effective["devices"] == [UUID1]
    assert effective["sources"]["devices"] == "cap"


def test_allowed_devices_drop_gpus_a_stored_policy_names_outside_them():
    """A policy stored before the caps changed keeps only the GPUs still allowed."""
    # Given / When
    effective = AdminPolicy(allowed_devices=(0,)).effective({"devices": [0, 1]}, DEVICES)

    # Then
    assert effective["devices"] == [0]
    assert effective["sources"]["devices"] == "cap"


def test_allowed_devices_keep_a_notebook_inside_them():
    """A notebook within the allowed GPUs keeps its own choice and source."""
    # Given / When
    effective = AdminPolicy(allowed_devices=(0, 1)).effective({"devices": [1]}, DEVICES)

    # Then
    assert (effective["devices"], effective["sources"]["devices"]) == ([1], "notebook")


@pytest.mark.parametrize(
    "own,source",
    [(None, "cap"), ({"memory_growth": None}, "cap"), ({"memory_growth": True}, "notebook")],
)
def test_force_memory_growth_turns_growth_on(own, source):
    """force_memory_growth: growth is on whatever the notebook says."""
    # Given / When
    effective = AdminPolicy(force_memory_growth=True).effective(own, DEVICES)

    # Then
    assert effective["memory_growth"] is True
    assert effective["sources"]["memory_growth"] == source


def test_force_memory_growth_refuses_growth_off():
    """Asking for growth off under force_memory_growth is refused, naming the cap."""
    # Given
    admin = AdminPolicy(force_memory_growth=True)

    # When
    with pytest.raises(CapExceeded) as err:
        admin.check({"memory_growth": False}, DEVICES)
    admin.check({"memory_growth": True}, DEVICES)

    # Then
    assert err.value.cap == "force_memory_growth"
    assert "force_memory_growth" in str(err.value)


def test_force_memory_growth_overrides_the_default_and_a_stored_policy():
    """A default or stored policy with growth off still runs with growth on."""
    # Given / When
    effective = AdminPolicy(default={"memory_growth": False}, force_memory_growth=True).effective(
        {"memory_growth": False}, DEVICES
    )

    # Then
    assert (effective["memory_growth"], effective["sources"]["memory_growth"]) == (True, "cap")


def test_without_user_policies_every_write_is_refused_and_stored_ones_ignored():
    """allow_user_policies=False: check() refuses any policy; effective is default and caps."""
    # Given
    admin = AdminPolicy(default={"memory_growth": True}, allow_user_policies=False)

    # When
    with pytest.raises(CapExceeded) as err:
        admin.check({}, DEVICES)
    effective = admin.effective({"memory_growth": False, "memory_limit_mb": 10}, DEVICES)

    # Then
    assert err.value.cap == "allow_user_policies"
    assert "allow_user_policies" in str(err.value)
    assert effective["memory_growth"] is True
    assert effective["memory_limit_mb"] is None
    assert effective["sources"] == {**NO_SOURCES, "memory_growth": "default"}


def test_admin_settings_as_json():
    """to_json shows defaults and caps under their config names."""
    # Given / When
    shown = AdminPolicy(
        default={"memory_growth": True}, max_memory_mb=4096, allowed_devices=(0, UUID1)
    ).to_json()

    # Then
    assert shown == {
        "default_policy": {"memory_growth": True},
        "max_memory_mb": 4096,
        "allowed_devices": [0, UUID1],
        "force_memory_growth": False,
        "allow_user_policies": True,
        "forced_policy": {},
        "max_threads": None,
        "placement_strategy": "most_free_memory",
    }


# -- rendering into the kernel's environment ----------------------------------------------------


def test_an_empty_policy_removes_every_policy_variable():
    """No opinion: every policy variable is None, so an inherited value is removed."""
    # Given / When
    env = render_env({}, DEVICES)

    # Then
    assert env == dict.fromkeys(POLICY_VARIABLES)
    assert set(env) >= {
        "CUDA_VISIBLE_DEVICES",
        "TF_FORCE_GPU_ALLOW_GROWTH",
        "TF_GPU_ALLOCATOR",
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_CLIENT_MEM_FRACTION",
        "PYTORCH_ALLOC_CONF",
        "PYTORCH_CUDA_ALLOC_CONF",
    }


@pytest.mark.parametrize(
    "devices,visible",
    [([0, 1], f"{UUID0},{UUID1}"), ([1], UUID1), ([UUID1, 0], f"{UUID1},{UUID0}"), ([MIG0], MIG0),
     ([], "-1")],
    ids=["indices", "one", "order-kept", "mig", "cpu-only"],
)
def test_devices_become_cuda_visible_devices_uuids(devices, visible):
    """CUDA_VISIBLE_DEVICES lists UUIDs (stable across reboots); [] hides every GPU."""
    # Given / When
    env = render_env({"devices": devices}, DEVICES)

    # Then
    assert env["CUDA_VISIBLE_DEVICES"] == visible


def test_unknown_devices_are_passed_as_given():
    """Without GPU facts an index cannot become a UUID, so it is passed as written."""
    # Given / When / Then
    assert render_env({"devices": [3]}, [])["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.parametrize(
    "growth,tf,xla", [(True, "true", "false"), (False, "false", "true"), (None, None, None)]
)
def test_memory_growth_sets_tf_growth_and_jax_preallocation(growth, tf, xla):
    """Growth on: TF grows and JAX does not preallocate; off: the opposite; null: unset."""
    # Given / When
    env = render_env({"memory_growth": growth}, DEVICES)

    # Then
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == tf
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == xla


@pytest.mark.parametrize("allocator", ["default", None])
def test_the_default_allocator_sets_nothing(allocator):
    """The framework's own allocator: allocator variables removed."""
    # Given / When
    env = render_env({"allocator": allocator}, DEVICES)

    # Then
    assert env["TF_GPU_ALLOCATOR"] is None
    assert env["PYTORCH_ALLOC_CONF"] is None
    assert env["PYTORCH_CUDA_ALLOC_CONF"] is None


def test_cuda_malloc_async_sets_tf_and_both_pytorch_names():
    """cudaMallocAsync reaches TF and PyTorch under its old and new variable names."""
    # Given / When
    env = render_env({"allocator": "cuda_malloc_async"}, DEVICES)

    # Then
    assert env["TF_GPU_ALLOCATOR"] == "cuda_malloc_async"
    assert env["PYTORCH_ALLOC_CONF"] == "backend:cudaMallocAsync"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "backend:cudaMallocAsync"


@pytest.mark.parametrize(
    "policy,fraction",
    [
        ({"memory_limit_mb": 4096}, "0.5"),  # the smallest visible GPU is the 8 GiB one
        ({"memory_limit_mb": 4096, "devices": [0]}, "0.25"),
        ({"memory_limit_mb": 4096, "devices": [UUID1]}, "0.5"),
        ({"memory_limit_mb": 4096, "devices": [MIG0]}, "0.4"),
        ({"memory_limit_mb": 64 * 1024, "devices": [0]}, "1.0"),
        ({"memory_limit_mb": 4096, "devices": []}, None),
        ({"memory_limit_mb": None}, None),
    ],
    ids=["all-visible", "big-gpu", "small-gpu-by-uuid", "mig-slice", "capped-at-1", "cpu-only",
         "no-limit"],
)
def test_the_limit_becomes_a_jax_fraction_of_the_smallest_visible_gpu(policy, fraction):
    """XLA_PYTHON_CLIENT_MEM_FRACTION is limit / smallest visible GPU, at most 1; the newer
    XLA_CLIENT_MEM_FRACTION is never set beside it (jaxlib 0.11 then refuses its GPU backend)."""
    # Given / When
    env = render_env(policy, DEVICES)

    # Then
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == fraction
    assert env["XLA_CLIENT_MEM_FRACTION"] is None


def test_a_full_effective_policy_renders_every_variable():
    """An effective policy under caps renders into one consistent environment."""
    # Given an effective policy clamped by caps
    admin = AdminPolicy(max_memory_mb=2048, allowed_devices=(1,), force_memory_growth=True)
    effective = admin.effective({"allocator": "cuda_malloc_async"}, DEVICES)

    # When
    env = render_env(effective, DEVICES)

    # Then
    assert env == {
        "CUDA_VISIBLE_DEVICES": UUID1,
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "TF_GPU_ALLOCATOR": "cuda_malloc_async",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
        "XLA_CLIENT_MEM_FRACTION": None,
        "PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync",
        "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync",
    }


# -- whole numbers ------------------------------------------------------------------------------

INTEGER_FIELDS = [
    name
    for name, schema in policy_schema()["properties"].items()
    if "integer" in (schema.get("type") or ())
]


@pytest.mark.parametrize("field", INTEGER_FIELDS)
def test_whole_number_floats_become_integers_in_every_integer_field(field):
    """JSON Schema counts 2.0 as an integer: validation hands on the int 2, never 2.0."""
    # Given a whole-number float in an integer field of the schema
    data = {field: 2.0}

    # When
    policy = validate_policy(data)

    # Then
    assert policy[field] == 2
    assert type(policy[field]) is int


def test_whole_number_floats_become_integers_inside_devices():
    """GPU indices given as 0.0 and 1.0 are the indices 0 and 1."""
    # Given / When
    policy = validate_policy({"devices": [0.0, 1.0]}, DEVICES)

    # Then
    assert policy["devices"] == [0, 1]
    assert [type(d) for d in policy["devices"]] == [int, int]
    assert render_env(policy, DEVICES)["CUDA_VISIBLE_DEVICES"] == f"{UUID0},{UUID1}"


@pytest.mark.parametrize("trait", ["default_policy", "forced_policy"])
def test_admin_policies_get_integers_too(trait):
    """The admin's default and forced policies go through the same validation."""
    # Given / When
    cfg = TFGPU(**{trait: {"devices": "auto", "gpu_count": 2.0, "intra_op_threads": 4.0}})

    # Then
    value = getattr(cfg, trait)
    assert value == {"devices": "auto", "gpu_count": 2, "intra_op_threads": 4}
    assert type(value["gpu_count"]) is int and type(value["intra_op_threads"]) is int


# -- the policy service: keys, logging, launches ------------------------------------------------


class FailingPlacement:
    """Placement that cannot place (a bug, a sampler in a bad state): records releases."""

    def __init__(self) -> None:
        self.released: list[str] = []

    def choose(self, *args, **kwargs):
        """Fail like an unexpected bug would."""
        raise RuntimeError("no snapshot yet")

    def release(self, kernel_id: str) -> None:
        """Record that the kernel's reservation was dropped."""
        self.released.append(kernel_id)


def make_service(tmp_path, root=None, admin=None, placement=None) -> PolicyService:
    """A service on a store of its own, with the two GPUs of DEVICES."""
    return PolicyService(
        PolicyStore(tmp_path / "policies.json"),
        admin or AdminPolicy(),
        devices=lambda: DEVICES,
        root_dir=str(root or tmp_path),
        placement=placement,
    )


@pytest.mark.parametrize("name", ["", ".", "..", "../x.ipynb", "sub/../nb.ipynb"])
def test_a_session_name_that_names_no_notebook_has_no_key(tmp_path, name):
    """JPY_SESSION_NAME is the notebook's folder joined with a name the client chose."""
    # Given a service whose root holds a folder
    service = make_service(tmp_path)
    folder = tmp_path / "sub"
    folder.mkdir()

    # When a session's name is empty, '.', or climbs with '..'
    key = service.keys.key_for_session(os.path.join(str(folder), name))

    # Then the kernel has no notebook key (it gets the admin default), and nothing raised
    assert key is None


def test_a_notebook_in_a_symlinked_folder_keeps_the_path_it_was_opened_by(tmp_path):
    """link -> real: the key of link/nb.ipynb is link/nb.ipynb, as the session names it."""
    # Given a folder and a link to it in the server root
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    service = make_service(tmp_path)

    # When / Then
    assert service.keys.key_for_session(str(tmp_path / "link" / "nb.ipynb")) == "link/nb.ipynb"
    assert service.keys.key_for_session(str(tmp_path / "real" / "nb.ipynb")) == "real/nb.ipynb"


@pytest.mark.parametrize("given", ["link", "real"])
def test_a_root_that_is_a_symlink_works_by_either_spelling(tmp_path, given):
    """The server root is a link: session paths under the link or under its target both map."""
    # Given a root given to the server as a link to the real folder
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "link-root").symlink_to(real)
    service = make_service(tmp_path, root=tmp_path / "link-root")
    root = tmp_path / ("link-root" if given == "link" else "real-root")

    # When / Then
    assert service.keys.key_for_session(str(root / "dir" / "nb.ipynb")) == "dir/nb.ipynb"
    assert service.keys.key_for_session(str(tmp_path / "elsewhere.ipynb")) is None


def test_a_session_name_with_a_backslash_is_one_file_on_posix(tmp_path):
    """On POSIX 'd\\n.ipynb' is a notebook in the root, not n.ipynb in folder d."""
    # Given / When / Then
    service = make_service(tmp_path)
    assert service.keys.key_for_session(str(tmp_path / "d\\n.ipynb")) == "d\\n.ipynb"
    assert service.keys.key_for_session(str(tmp_path / "d" / "n.ipynb")) == "d/n.ipynb"


def test_a_session_name_that_cannot_be_keyed_has_no_key(tmp_path):
    """A file name that is not UTF-8 on disk: the kernel gets the admin default, nothing raises."""
    # Given / When / Then
    service = make_service(tmp_path)
    assert service.keys.key_for_session(os.fsdecode(bytes(tmp_path) + b"/\xff.ipynb")) is None


@pytest.fixture
def windows_paths(monkeypatch):
    """The notebook keys see Windows paths (ntpath, a backslash separator)."""
    import ntpath
    import types

    import jupyter_tfgpu.policy.keys as keys_module

    monkeypatch.setattr(keys_module, "os", types.SimpleNamespace(sep="\\", path=ntpath))


@pytest.mark.parametrize(
    "session,key",
    [
        ("C:\\srv\\dir\\nb.ipynb", "dir/nb.ipynb"),
        ("C:\\srv\\nb.ipynb", "nb.ipynb"),
        ("C:\\srv\\dir\\..\\..\\nb.ipynb", None),
        ("D:\\elsewhere\\nb.ipynb", None),
        ("dir\\nb.ipynb", "dir/nb.ipynb"),
    ],
)
def test_on_windows_a_session_path_is_keyed_with_slashes(tmp_path, windows_paths, session, key):
    """Windows session paths: separators become '/'; another drive is outside the root."""
    # Given a service whose root is on drive C:
    service = make_service(tmp_path, root="C:\\srv")

    # When / Then
    assert service.keys.key_for_session(session) == key


def test_a_bad_stored_policy_is_logged_once(tmp_path, caplog):
    """A hand-edited store with a bad value: ignored, and said once, not on every read."""
    # Given a store holding a policy that does not validate
    service = make_service(tmp_path)
    bad = {"version": 1, "policies": {"nb.ipynb": {"memory_limit_mb": "a lot"}}}
    service.store.path.write_text(json.dumps(bad))
    service.store.refresh()

    # When the effective policy is read many times
    with caplog.at_level(logging.ERROR):
        effective = [service.effective("nb.ipynb") for _ in range(5)]

    # Then the admin default applies and the problem is logged once
    assert all(e["memory_limit_mb"] is None for e in effective)
    assert [r.getMessage() for r in caplog.records if "nb.ipynb" in r.getMessage()] == [
        "jupyter-tfgpu: ignoring the stored policy of nb.ipynb: memory_limit_mb: 'a lot' is not "
        "of type 'integer', 'null' (Memory limit (MiB))"
    ]


def test_a_policy_that_cannot_be_applied_starts_the_kernel_with_the_admin_default(tmp_path, caplog):
    """The launch falls back to the admin default, says why in the document, logs it once."""
    # Given a notebook asking for automatic placement, and placement that fails
    placement = FailingPlacement()
    admin = AdminPolicy(default={"memory_growth": True})
    service = make_service(tmp_path, admin=admin, placement=placement)
    service.set("nb.ipynb", {"devices": "auto", "gpu_count": 2})

    # When its kernel starts, twice
    with caplog.at_level(logging.ERROR):
        env, launch = service.launch("k1", str(tmp_path / "nb.ipynb"))
        service.launch("k1", str(tmp_path / "nb.ipynb"))
    document = launch.to_json()

    # Then it starts with the admin default, and the document says why
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["CUDA_VISIBLE_DEVICES"] is None
    assert json.loads(env["TFGPU_POLICY"]) == document
    assert document["notebook"] == "nb.ipynb"
    assert document["gpu_count"] is None
    assert "RuntimeError: no snapshot yet" in document["error"]
    assert "admin default" in document["error"]
    assert placement.released == ["k1", "k1"]
    assert len([r for r in caplog.records if "no snapshot yet" in r.getMessage()]) == 1
    # and no restart is asked for while a restart would fall back the same way
    def restart_required() -> bool:
        return launch.restart_required(service.rendered("nb.ipynb"), service.own("nb.ipynb"))

    assert restart_required() is False
    # but once the notebook's policy changed, a restart may apply it
    service.set("nb.ipynb", {"memory_limit_mb": 512})
    assert restart_required() is True


def test_without_an_applicable_admin_default_the_kernel_starts_without_a_policy(tmp_path):
    """The last resort: no policy at all, never a failed kernel start."""
    # Given an admin default that itself needs the failing placement
    service = make_service(
        tmp_path, admin=AdminPolicy(default={"devices": "auto"}), placement=FailingPlacement()
    )

    # When a kernel starts
    env, launch = service.launch("k1", str(tmp_path / "nb.ipynb"))
    document = launch.to_json()

    # Then it starts with no policy variables, and the document says why
    assert {name: env[name] for name in POLICY_VARIABLES} == dict.fromkeys(POLICY_VARIABLES)
    assert document["devices"] is None
    assert "without a policy" in document["error"]

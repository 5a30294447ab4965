"""Every interpreter of the policy schema accepts every value the schema allows.

``policy/policy.schema.json`` is the one source of the policy's fields. The server validates with
it (``policy/model.py``), the magic and the PolicyEditor read it (``in_kernel/policy_fields.py``),
the lab reads it (``labextension/src/policy.ts``, walked the same way by its jest suite), and the
kernel bootstrap, which runs in any Python and cannot read the package, checks the document it is
started with by hand (``tfgpu_memory.check``, ``tfgpu_runtime.check``, ``tfgpu_policy``). These
tests walk the schema, every enum value, const, type and bound of every field, and feed each
value to each Python interpreter: a value added to the schema fails here until the bootstrap
accepts it too, instead of passing the server and being refused in every kernel.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.in_kernel.policy_fields import PolicyField, field_named
from jupyter_tfgpu.policy.environment import ContextReserve
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.policy.model import policy_field_names, policy_schema, validate_policy
from tests.bootstrap_helpers import last_json, run_python

# Strings for a field (or an array's items) that only a pattern constrains: the walk takes the
# first that matches; a new pattern none matches fails the walk, asking for one here.
SAMPLE_STRINGS = ("GPU-4a1c39b2-77e0-4c3e-9f0e-1b2c3d4e5f60", "MIG-4a1c39b2/1/0", "text")
# Four GPUs the server's rendering resolves indices against (to UUIDs, as the provisioner does).
DEVICES = [
    DeviceInfo(index=i, uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd", name="T4",
               memory_total=16 * 2**30)
    for i in range(4)
]  # fmt: skip
RESERVE = ContextReserve(mb=550, source="starting value")


def branches(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A (sub)schema and its ``anyOf`` / ``oneOf`` alternatives."""
    return [spec, *spec.get("anyOf", ()), *spec.get("oneOf", ())]


def types_of(spec: dict[str, Any]) -> list[str]:
    kinds = spec.get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


def sample_string(spec: dict[str, Any]) -> str:
    """A string the (sub)schema allows."""
    pattern = spec.get("pattern")
    for sample in SAMPLE_STRINGS:
        if pattern is None or re.search(pattern, sample):
            return sample
    raise AssertionError(f"no string of SAMPLE_STRINGS matches {pattern!r}: add one")


def scalar_samples(spec: dict[str, Any]) -> list[Any]:
    """Values of each scalar type the (sub)schema allows: both booleans, each bound, a string."""
    values: list[Any] = []
    for branch in branches(spec):
        kinds = types_of(branch)
        if "boolean" in kinds:
            values += [True, False]
        if "integer" in kinds or "number" in kinds:
            least, most = branch.get("minimum", 0), branch.get("maximum", 1000)
            values += [least, most] + ([] if "integer" in kinds else [(least + most) / 2])
        if "string" in kinds:
            values.append(sample_string(branch))
    return values


def allowed_values(spec: dict[str, Any]) -> list[Any]:
    """Every value the walk feeds for one field: each enum value, const, type and bound, null."""
    if "enum" in spec:
        return list(spec["enum"])
    values: list[Any] = [None]
    for branch in branches(spec):
        if "const" in branch:
            values.append(branch["const"])
        if "array" in types_of(branch):
            values += [[item] for item in scalar_samples(branch["items"])]
    values += scalar_samples(spec)
    unique: list[Any] = []
    for value in values:
        if not any(value == seen and type(value) is type(seen) for seen in unique):
            unique.append(value)
    return unique


def walk() -> list[tuple[str, Any]]:
    """(field, value) for every value of every field of the shipped schema."""
    properties = policy_schema()["properties"]
    return [(name, value) for name, spec in properties.items() for value in allowed_values(spec)]


def typed(field: PolicyField, value: Any) -> str:
    """How a user types ``value`` after ``%tfgpu policy --<option>``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def launch_document(policy: dict[str, Any]) -> dict[str, Any]:
    """The ``TFGPU_POLICY`` document the server renders for a kernel with ``policy``."""
    if policy.get("devices") == "auto":
        # Placement picks the GPUs before the document is made: the kernel never sees "auto".
        policy = {**policy, "devices": [DEVICES[0].index]}
    return Launch.render(policy, DEVICES, RESERVE, notebook="nb.ipynb", kernel_id="k1").to_json()


def bootstrap_reads(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the kernel bootstrap makes of each document, in a kernel-like Python process."""
    proc = run_python(
        f"""
        import json, tfgpu_policy
        seen = []
        for document in json.loads({json.dumps(json.dumps(documents))}):
            policy, problems = tfgpu_policy.load_policy(json.dumps(document))
            seen.append({{"policy": policy, "problems": problems}})
        print(json.dumps(seen))
        """
    )
    return last_json(proc)


def test_the_walk_covers_every_field_and_each_enum_value():
    """The walk itself: every field of the schema, and each value of each enum, is in it."""
    values = walk()
    assert {name for name, _ in values} == set(policy_field_names())
    for name, spec in policy_schema()["properties"].items():
        for value in spec.get("enum", ()):
            assert (name, value) in values


@pytest.mark.parametrize("name, value", walk(), ids=lambda v: json.dumps(v))
def test_the_server_and_the_magic_accept_each_value(name, value):
    """policy/model.py validates it unchanged; %tfgpu policy parses what a user types for it and
    shows it."""
    # Given one value the schema allows for one field
    # When the server validates it / Then it is kept as given
    assert validate_policy({name: value}) == {name: value}
    # When a user types it after %tfgpu policy / Then the magic reads the same value
    field = field_named(name)
    assert field.parse(typed(field, value)) == value
    assert isinstance(field.format(value), str)


# The PolicyEditor picks devices among this server's GPUs, by index: a list of UUIDs is the magic's.
EDITABLE = [
    (name, value)
    for name, value in walk()
    if not (name == "devices" and isinstance(value, list) and any(isinstance(v, str) for v in value))
]


@pytest.mark.parametrize("name, value", EDITABLE, ids=lambda v: json.dumps(v))
def test_the_policy_editor_shows_and_gives_back_each_value(name, value):
    """The PolicyEditor's control for the field shows the value and gives the same one back."""
    from jupyter_tfgpu.in_kernel.policy_editor import _FieldControl

    # Given the field's control on a server with as many GPUs as a policy may name
    gpus = [{"index": index} for index in range(64)]
    control = _FieldControl(field_named(name), gpus)
    # When the notebook's policy has the value / Then the form gives it back unchanged
    control.set(value)
    assert control.get() == value


def test_the_kernel_bootstrap_accepts_each_value():
    """Each value, in the document the server renders for a kernel, passes the bootstrap's
    checks unchanged (one kernel-like process reads them all)."""
    # Given the launch document of a kernel for each value of the walk
    values = walk()
    documents = [launch_document(validate_policy({name: value})) for name, value in values]
    # When the bootstrap reads each, as it does at a framework's import
    seen = bootstrap_reads(documents)
    # Then none has a problem, and every field keeps its value
    for (name, value), document, read in zip(values, documents, seen):
        assert read["problems"] == [], (name, value)
        assert read["policy"][name] == document[name], (name, value)


def test_a_value_the_bootstrap_does_not_know_is_caught():
    """The walk can fail: a value added to an enum of the schema is refused by the bootstrap
    until its check lists it (as it would be in every kernel)."""
    # Given a document with an allocator the bootstrap has no word for
    document = launch_document({"allocator": "added_value"})
    # When the bootstrap reads it
    [read] = bootstrap_reads([document])
    # Then it is refused, naming the field
    assert read["policy"]["allocator"] is None
    assert [p for p in read["problems"] if "'allocator'" in p]


def test_every_field_is_a_bootstrap_concerns_or_the_servers_alone():
    """Each field of the schema is checked by one concern of the bootstrap (memory or runtime),
    or listed as the server's alone: a new knob fails here until it says which."""
    # Given the bootstrap's tables, as a kernel process loads them
    proc = run_python(
        """
        import json, tfgpu_memory, tfgpu_policy, tfgpu_runtime
        print(json.dumps({"memory": tfgpu_memory.MEMORY_FIELDS,
                          "runtime": tfgpu_runtime.RUNTIME_FIELDS,
                          "server": tfgpu_policy.SERVER_SIDE_FIELDS}))
        """
    )
    tables = last_json(proc)
    # Then each field of the schema is in exactly one of them
    claimed = [name for table in tables.values() for name in table]
    assert sorted(claimed) == sorted(policy_field_names()), tables

"""The policy's fields as the magic and the PolicyEditor offer them, read from the policy schema.

``jupyter_tfgpu/policy/policy.schema.json`` is read as data (the kernel side imports nothing
from the server side), so a field added to the schema gets a ``%tfgpu policy`` option, a line in
``%tfgpu --help``, a row in ``%tfgpu`` and a control in ``PolicyEditor`` without code here: a
boolean becomes ``--name/--no-name``, an integer ``--name N`` (sizes in MiB for ``*_mb`` fields,
which take units), an enum ``--name CHOICE``, an array ``--name a,b``. Only the friendlier
option names and value aliases of existing fields are listed below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

from jupyter_tfgpu.in_kernel.units import format_mib, parse_mib

# Shorter option names than the field names, where the issue and the docs use them.
OPTION_NAMES = {"memory_growth": "growth", "memory_limit_mb": "limit"}
# Words accepted for a value besides the schema's own.
VALUE_ALIASES: dict[str, dict[str, Any]] = {
    "allocator": {"async": "cuda_malloc_async", "cudamallocasync": "cuda_malloc_async"},
}
# The value that removes a field from the notebook's own policy (null: "no opinion").
UNSET_WORDS = ("none", "unset", "null")


@dataclass(frozen=True)
class PolicyField:
    """One field of the policy, with how to type it and show it."""

    name: str
    kind: str  # bool | mib | int | number | enum | list | text
    title: str
    description: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    aliases: dict[str, Any] = field(default_factory=dict)

    @property
    def option(self) -> str:
        """The magic's option name, without dashes."""
        return OPTION_NAMES.get(self.name, self.name.replace("_", "-"))

    def parse(self, text: str) -> Any:
        """A typed value for this field from what the user typed (ValueError says why)."""
        word = str(text).strip()
        lowered = word.lower()
        if lowered in UNSET_WORDS:
            return None
        if lowered in self.aliases:
            return self.aliases[lowered]
        if self.kind == "bool":
            if lowered in ("on", "true", "yes", "1"):
                return True
            if lowered in ("off", "false", "no", "0"):
                return False
            raise ValueError(f"{self.name}: expected on or off, not {word!r}")
        if self.kind == "mib":
            value: Any = parse_mib(word)
        elif self.kind in ("int", "number"):
            try:
                value = int(word) if self.kind == "int" else float(word)
            except ValueError:
                raise ValueError(f"{self.name}: expected a number, not {word!r}") from None
        elif self.kind == "enum":
            if word not in self.choices:
                words = ", ".join([*map(str, self.choices), *self.aliases])
                raise ValueError(f"{self.name}: expected one of {words}, not {word!r}")
            return word
        elif self.kind == "list":
            items = [item.strip() for item in word.split(",") if item.strip()]
            return [int(item) if item.isdigit() else item for item in items]
        else:
            return word
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name}: must be at least {self.minimum}, not {word!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name}: must be at most {self.maximum}, not {word!r}")
        return value

    def format(self, value: Any) -> str:
        """How a value of this field reads in the magic's output."""
        if value is None:
            return "not set"
        if self.kind == "bool":
            return "on" if value else "off"
        if self.kind == "mib":
            return format_mib(value)
        if self.kind == "list":
            if isinstance(value, str):
                return value  # a named mode, such as devices "auto"
            if value == [] and self.name == "devices":
                return "CPU only"
            return ", ".join(map(str, value)) if value else "none"
        return str(value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _types(spec: dict[str, Any]) -> set[str]:
    """The JSON types a field takes, its own and those of its ``anyOf`` / ``oneOf`` branches."""
    types = set(_as_list(spec.get("type")))
    for branch in spec.get("anyOf", []) + spec.get("oneOf", []):
        types.update(_types(branch))
    return types


def _consts(spec: dict[str, Any]) -> dict[str, Any]:
    """Words that stand for themselves (``"auto"``), from ``const`` branches."""
    return {
        str(branch["const"]).lower(): branch["const"]
        for branch in spec.get("anyOf", []) + spec.get("oneOf", [])
        if "const" in branch and branch["const"] is not None
    }


def _kind(name: str, spec: dict[str, Any]) -> str:
    types = _types(spec)
    if "enum" in spec:
        return "enum"
    if "boolean" in types:
        return "bool"
    if "integer" in types:
        return "mib" if name.endswith("_mb") else "int"
    if "number" in types:
        return "number"
    if "array" in types:
        return "list"
    return "text"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The policy JSON Schema shipped in the package."""
    resource = files("jupyter_tfgpu").joinpath("policy").joinpath("policy.schema.json")
    return json.loads(resource.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def policy_fields() -> tuple[PolicyField, ...]:
    """Every field of the policy, in the schema's order."""
    rows = []
    for name, spec in schema().get("properties", {}).items():
        aliases = {**_consts(spec), **VALUE_ALIASES.get(name, {})}
        if name == "devices":
            aliases.update(cpu=[], all=None)
        rows.append(
            PolicyField(
                name=name,
                kind=_kind(name, spec),
                title=spec.get("title", name),
                description=spec.get("description", ""),
                choices=tuple(v for v in spec.get("enum", ()) if v is not None),
                minimum=spec.get("minimum"),
                maximum=spec.get("maximum"),
                aliases=aliases,
            )
        )
    return tuple(rows)


def field_named(name: str) -> PolicyField:
    """The field called ``name`` (its option name works too); KeyError if there is none."""
    for row in policy_fields():
        if name in (row.name, row.option, row.name.replace("_", "-")):
            return row
    raise KeyError(name)


def setting_text(item: dict[str, Any], joiner: str = " ") -> str:
    """One applied/skipped entry of a bootstrap record, as "name value" (value in field form)."""
    name = str(item.get("setting"))
    try:
        return f"{name}{joiner}{field_named(name).format(item.get('value'))}"
    except KeyError:
        return name


def requested(document: dict[str, Any] | None) -> dict[str, Any]:
    """A policy document's fields as asked for: ``devices: "auto"`` rather than what was picked."""
    document = dict(document or {})
    if "devices_requested" in document:
        document["devices"] = document["devices_requested"]
    return document


def same_policy(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two policy documents ask for the same on every field of the policy."""
    a, b = requested(a), requested(b)
    return all(a.get(row.name) == b.get(row.name) for row in policy_fields())

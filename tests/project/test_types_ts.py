"""labextension/src/types.ts, the lab's hand-made copy of the server's JSON shapes, against the
OpenAPI spec (jupyter_tfgpu/server/api/openapi.yaml), which is the truth.

Each interface that mirrors a response schema must have the same property names (every property
of the interface exists in the schema; every property the schema requires exists in the
interface; a property the schema does not require is marked ``?``) and corresponding types:
null, string (or the same string literals as the schema's enum), number, boolean, arrays,
nested object literals, and references to the interface mirroring the schema a ``$ref`` names.
types.ts is read with a small parser for the TypeScript it uses (interfaces, type aliases,
unions, intersections, arrays, object literals, ``Record<K, V>``); comments are dropped first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TYPES_TS = ROOT / "labextension" / "src" / "types.ts"
OPENAPI = ROOT / "jupyter_tfgpu" / "server" / "api" / "openapi.yaml"
ENFORCEMENT_EVENT = ROOT / "jupyter_tfgpu" / "server" / "events" / "enforcement.yaml"
EVENT = "enforcement event"  # stands for the event schema in MIRRORS

# TypeScript name -> the schemas it mirrors. An interface that mirrors two schemas (the event on
# jupyter_server's bus and the entry of GET enforcement) holds only what both have and needs only
# what both require.
MIRRORS: dict[str, tuple[str, ...]] = {
    "IStatus": ("Status",),
    "IGpuProcess": ("GpuProcess",),
    "IGpu": ("Gpu",),
    "ISnapshot": ("Snapshot",),
    "IStreamKernel": ("StreamKernel",),
    "ICadence": ("Cadence",),
    "INvlink": ("Nvlink",),
    "IPolicyChanges": ("PolicyChanges",),
    "IHistory": ("History",),
    "IPolicyDescription": ("PolicyDescription",),
    "IKernel": ("Kernel",),
    "IConfig": ("Config",),
    "IEnforcementEvent": (EVENT, "EnforcementAction"),
    "Source": ("Source",),
    "EffectivePolicy": ("EffectivePolicy",),
    "Policy": ("Policy",),
    "IPlacement": ("Placement",),
    "EnforcementLevel": ("EnforcementLevel",),
    "EnforcementMechanism": ("EnforcementMechanism",),
    "IKernelEnforcement": ("KernelEnforcement",),
    "ICapEnforcement": ("CapEnforcement",),
    "IHardCapsStatus": ("HardCapsStatus",),
    "IHardCapsHost": ("HardCapsHost",),
}
# Names in types.ts that mirror no schema, and why.
NOT_MIRRORED = {
    "IApi": "the lab's request helpers, not a JSON shape",
}


# -- types.ts --------------------------------------------------------------------------------


@dataclass
class Member:
    """One property of an interface or object literal."""

    optional: bool
    type: Any


@dataclass
class TsModule:
    """The interfaces and type aliases of one TypeScript file."""

    interfaces: dict[str, dict[str, Member]] = field(default_factory=dict)
    aliases: dict[str, Any] = field(default_factory=dict)


TOKEN = re.compile(r"\s*('(?:[^'\\]|\\.)*'|\w+|[{}()\[\]<>|&;:?,=])")


def tokenize(text: str) -> list[str]:
    """The file's tokens, comments dropped (types.ts has no strings that hold comment markers)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    tokens, pos = [], 0
    while text[pos:].strip():
        match = TOKEN.match(text, pos)
        assert match, f"types.ts: cannot read {text[pos : pos + 40]!r}"
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class Parser:
    """Recursive descent over the TypeScript types.ts uses.

    A type is a tuple: ("union", [types]), ("inter", [types]), ("array", type),
    ("object", {name: Member}), ("literal", value), ("name", name, [type arguments]).
    """

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.tokens[self.pos]
        assert expected is None or token == expected, f"types.ts: {expected!r} expected, {token!r}"
        self.pos += 1
        return token

    def module(self) -> TsModule:
        result = TsModule()
        while self.peek() is not None:
            if self.take() != "export":
                continue
            kind, name = self.take(), self.take()
            if kind == "interface":
                result.interfaces[name] = self.members()
            elif kind == "type":
                self.take("=")
                result.aliases[name] = self.type()
                self.take(";")
        return result

    def members(self) -> dict[str, Member]:
        """``{ name: type; name?: type; ... }``; methods (IApi's) are kept as None."""
        self.take("{")
        members: dict[str, Member] = {}
        while self.peek() != "}":
            name = self.take()
            if self.peek() in ("(", "<"):  # a method: skip to the end of its signature
                depth = 0
                while not (depth == 0 and self.peek() == ";"):
                    token = self.take()
                    depth += token in "({<" and 1 or token in ")}>" and -1 or 0
                self.take(";")
                members[name] = Member(False, None)
                continue
            optional = self.peek() == "?"
            if optional:
                self.take("?")
            self.take(":")
            members[name] = Member(optional, self.type())
            if self.peek() in (";", ","):
                self.take()
        self.take("}")
        return members

    def type(self) -> Any:
        if self.peek() == "|":
            self.take("|")
        parts = [self.intersection()]
        while self.peek() == "|":
            self.take("|")
            parts.append(self.intersection())
        return parts[0] if len(parts) == 1 else ("union", parts)

    def intersection(self) -> Any:
        parts = [self.postfix()]
        while self.peek() == "&":
            self.take("&")
            parts.append(self.postfix())
        return parts[0] if len(parts) == 1 else ("inter", parts)

    def postfix(self) -> Any:
        result = self.primary()
        while self.peek() == "[":
            self.take("[")
            self.take("]")
            result = ("array", result)
        return result

    def primary(self) -> Any:
        token = self.peek()
        if token == "(":
            self.take("(")
            result = self.type()
            self.take(")")
            return result
        if token == "{":
            return ("object", self.members())
        self.take()
        if token.startswith("'"):
            return ("literal", token[1:-1])
        if token == "null":
            return ("literal", None)
        arguments = []
        if self.peek() == "<":
            self.take("<")
            arguments.append(self.type())
            while self.peek() == ",":
                self.take(",")
                arguments.append(self.type())
            self.take(">")
        return ("name", token, arguments)


def read_types_ts(text: str) -> TsModule:
    """Parse the text of types.ts."""
    return Parser(tokenize(text)).module()


# -- the comparison --------------------------------------------------------------------------


@dataclass
class Shape:
    """What a type (TypeScript or JSON Schema) lets through, by kind."""

    null: bool = False
    strings: Any = None  # None: no string; "any"; or a frozenset of the allowed values
    number: bool = False
    boolean: bool = False
    arrays: list = field(default_factory=list)  # item types
    objects: list = field(default_factory=list)  # object types
    unknown: bool = False

    def add_strings(self, values: Any) -> None:
        if values == "any" or self.strings == "any":
            self.strings = "any"
        else:
            self.strings = frozenset(self.strings or ()) | frozenset(values)


class Checker:
    """Compares types.ts with the schemas; collects (path, problem) pairs."""

    def __init__(self, ts: TsModule, schemas: dict[str, Any]):
        self.ts = ts
        self.schemas = schemas
        self.problems: list[tuple[str, str]] = []
        self.ts_for_schema = {s: name for name, mirrored in MIRRORS.items() for s in mirrored}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            return self.resolve(self.schemas[schema["$ref"].rsplit("/", 1)[-1]])
        return schema

    def schema_shape(self, schema: dict[str, Any], shape: Shape | None = None) -> Shape:
        shape = shape or Shape()
        if "$ref" in schema:
            return self.schema_shape(self.resolve(schema), shape)
        for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
            self.schema_shape(alternative, shape)
        if "const" in schema:
            shape.null |= schema["const"] is None
            if isinstance(schema["const"], str):
                shape.add_strings({schema["const"]})
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        enum = schema.get("enum")
        if enum is not None and not types:
            types = sorted({"null" if v is None else "string" for v in enum})
        for kind in types:
            if kind == "null":
                shape.null = True
            elif kind == "string":
                shape.add_strings({v for v in enum if v is not None} if enum else "any")
            elif kind in ("number", "integer"):
                shape.number = True
            elif kind == "boolean":
                shape.boolean = True
            elif kind == "array":
                shape.arrays.append(schema.get("items", {}))
            elif kind == "object":
                shape.objects.append(schema)
        return shape

    def ts_shape(self, t: Any, shape: Shape | None = None) -> Shape:
        shape = shape or Shape()
        kind = t[0]
        if kind == "union":
            for part in t[1]:
                self.ts_shape(part, shape)
        elif kind == "literal":
            if t[1] is None:
                shape.null = True
            else:
                shape.add_strings({t[1]})
        elif kind == "array":
            shape.arrays.append(t[1])
        elif kind in ("object", "inter"):
            shape.objects.append(t)
        elif t[1] == "string":
            shape.add_strings("any")
        elif t[1] == "number":
            shape.number = True
        elif t[1] == "boolean":
            shape.boolean = True
        elif t[1] == "unknown":
            shape.unknown = True
        elif t[1] in self.ts.aliases:
            self.ts_shape(self.ts.aliases[t[1]], shape)
        else:  # an interface, or Record<K, V>
            shape.objects.append(t)
        return shape

    def compare(self, t: Any, schema: dict[str, Any], path: str) -> None:
        """One TypeScript type against one schema."""
        parts = list(t[1]) if t[0] == "union" else [t]
        alternatives = schema.get("oneOf") or schema.get("anyOf") or [schema]
        # A name that mirrors a schema answers a $ref to that schema, and nothing more is compared.
        for ref in [a for a in alternatives if "$ref" in a]:
            target = ref["$ref"].rsplit("/", 1)[-1]
            named = [p for p in parts if p[0] == "name" and target in MIRRORS.get(p[1], ())]
            if named:
                parts.remove(named[0])
                alternatives = [a for a in alternatives if a is not ref]
        names = [p[1] for p in parts if p[0] == "name" and p[1] in MIRRORS]
        refs = [a["$ref"].rsplit("/", 1)[-1] for a in alternatives if "$ref" in a]
        if names and refs:
            return self.problem(path, f"types.ts names {names}, the schema refers to {refs}")
        if len(alternatives) != len(schema.get("oneOf") or schema.get("anyOf") or [schema]):
            schema = {"oneOf": alternatives}
        ts, sc = self.ts_shape(("union", parts)), self.schema_shape(schema)
        if ts.unknown:
            return
        self.kinds(ts, sc, path)
        if ts.arrays and sc.arrays:
            items = ts.arrays[0] if len(ts.arrays) == 1 else ("union", ts.arrays)
            self.compare(items, sc.arrays[0], path + "[]")
        if ts.objects and sc.objects:
            for obj in ts.objects:
                self.compare_object(obj, sc.objects, path)

    def kinds(self, ts: Shape, sc: Shape, path: str) -> None:
        pairs = [("null", ts.null, sc.null), ("number", ts.number, sc.number)]
        pairs += [("boolean", ts.boolean, sc.boolean), ("string", ts.strings, sc.strings)]
        pairs += [("array", bool(ts.arrays), bool(sc.arrays))]
        pairs += [("object", bool(ts.objects), bool(sc.objects))]
        for kind, mine, theirs in pairs:
            if bool(mine) != bool(theirs):
                where = "types.ts" if mine else "the schema"
                self.problem(path, f"{kind} allowed only by {where}")
            elif isinstance(mine, frozenset) and mine != theirs:
                theirs = "any string" if theirs == "any" else sorted(theirs)
                self.problem(path, f"values {sorted(mine)} in types.ts, {theirs} in the schema")

    def compare_object(self, t: Any, schemas: list[dict[str, Any]], path: str) -> None:
        if t[0] == "object":
            self.compare_members(t[1], schemas, path)
        elif t[0] == "inter":  # Policy & {...}: the literal's members must be in the schema
            for part in t[1]:
                if part[0] == "object":
                    self.compare_members(part[1], schemas, path, required=False)
        elif t[1] in self.ts.interfaces:
            self.compare_members(self.ts.interfaces[t[1]], schemas, path)
        # Record<K, V> and Policy: any keys; nothing to compare by name.

    def compare_members(
        self, members: dict[str, Member], schemas: list[dict[str, Any]], path: str, required=True
    ) -> None:
        """Names both ways, ``?`` against ``required``, then each property's type."""
        needed = set.intersection(*(set(s.get("required", [])) for s in schemas))
        if required:
            for name in sorted(needed - set(members)):
                self.problem(f"{path}.{name}", "required by the schema, missing in types.ts")
        for name, member in members.items():
            homes = [s.get("properties", {}).get(name) for s in schemas]
            if None in homes:
                self.problem(f"{path}.{name}", "in types.ts, not in the schema")
                continue
            if not member.optional and name not in needed:
                self.problem(f"{path}.{name}", "optional in the schema, not `?` in types.ts")
            elif member.optional and name in needed and required:
                self.problem(f"{path}.{name}", "required by the schema, `?` in types.ts")
            for home in homes:
                self.compare(member.type, home, f"{path}.{name}")

    def problem(self, path: str, what: str) -> None:
        self.problems.append((path, what))

    def check(self, name: str) -> None:
        """One mirrored interface or alias against its schema(s)."""
        schemas = [self.schemas[s] for s in MIRRORS[name]]
        if name in self.ts.interfaces:
            self.compare_members(self.ts.interfaces[name], [self.resolve(s) for s in schemas], name)
        elif name != "Policy":  # Record<string, unknown>: any policy document fits
            for schema in schemas:
                self.compare(self.ts.aliases[name], schema, name)


def load_schemas() -> dict[str, Any]:
    """The spec's component schemas, and the enforcement event's schema as EVENT."""
    schemas = dict(yaml.safe_load(OPENAPI.read_text())["components"]["schemas"])
    schemas[EVENT] = yaml.safe_load(ENFORCEMENT_EVENT.read_text())
    return schemas


def problems_of(types_ts: str) -> list[tuple[str, str]]:
    """Every difference between the text of a types.ts and the spec."""
    checker = Checker(read_types_ts(types_ts), load_schemas())
    for name in MIRRORS:
        checker.check(name)
    return checker.problems


def unexpected(problems: list[tuple[str, str]]) -> list[str]:
    return [f"{path}: {what}" for path, what in problems]


# -- the tests -------------------------------------------------------------------------------


def test_every_name_in_types_ts_is_classified():
    """A new interface or alias in types.ts says which schema it mirrors, or that it mirrors none."""
    # Given the names types.ts exports
    ts = read_types_ts(TYPES_TS.read_text())
    names = set(ts.interfaces) | set(ts.aliases)
    # Then each one is in MIRRORS or NOT_MIRRORED, and both tables name only what exists
    assert names == set(MIRRORS) | set(NOT_MIRRORED)
    assert all(s in load_schemas() for mirrored in MIRRORS.values() for s in mirrored)


def test_types_ts_mirrors_the_spec():
    """Property names, ``?`` and types of types.ts agree with openapi.yaml."""
    # Given types.ts as it is
    problems = problems_of(TYPES_TS.read_text())
    # Then they agree
    assert unexpected(problems) == []


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (("  lost: boolean;\n", "  lost: boolean;\n  colour: string;\n"), "IGpu.colour"),
        (("  lost: boolean;\n", ""), "IGpu.lost"),
        (("  lost: boolean;\n", "  lost?: boolean;\n"), "IGpu.lost"),
        (
            (
                "  sample_interval: number;\n  history_seconds?",
                "  sample_interval: string;\n  history_seconds?",
            ),
            "IStatus.sample_interval",
        ),
        (("  reason: string | null;\n  /** Sec", "  reason: string;\n  /** Sec"), "IStatus.reason"),
        (("'memory_cap' | 'idle'", "'memory_cap' | 'idle' | 'other'"), "IEnforcementEvent.rule"),
        (
            ("gpu_memory_unknown: string | null;", "gpu_memory_unknown?: string | null;"),
            "IStreamKernel.gpu_memory_unknown",
        ),
        (("history_seconds?: number", "history_seconds: number"), "IStatus.history_seconds"),
        (("processes: IGpuProcess[]", "processes: IGpu[]"), "IGpu.processes[]"),
        (
            ("used_memory: number | null;\n      pids", "used_memory: number;\n      pids"),
            "IKernel.gpu_memory.per_gpu[].used_memory",
        ),
    ],
)
def test_a_drift_is_found(edit, found):
    """Each kind of difference this test knows is reported (the test would catch it)."""
    # Given types.ts with one edit that the spec does not allow
    old, new = edit
    text = TYPES_TS.read_text()
    assert text.count(old) == 1, old
    # When it is compared
    problems = unexpected(problems_of(text.replace(old, new)))
    # Then that difference is reported, and nothing else
    assert problems and all(p.startswith(found + ":") for p in problems), problems


def _record(source: str, name: str) -> dict[str, str]:
    """The string entries of ``const NAME: Record<..., string> = {...}`` in a TypeScript file."""
    body = re.search(rf"const {name}: Record<[^>]+> = \{{(.*?)\}};", source, re.S)
    assert body, f"no {name} in kernelmemory.tsx"
    pairs = re.findall(r"(\w+): ['\"](.*?)['\"],?\s*$", body[1], re.M)
    return dict(pairs)


def test_the_labs_words_for_levels_and_mechanisms_are_the_servers():
    """The lab's copy of each level's label and of the mechanism names (kernelmemory.tsx) is
    the server's (policy/cap_enforcement.py), as are types.ts's unions of them."""
    from jupyter_tfgpu.policy.cap_enforcement import LEVELS, MECHANISMS

    source = (ROOT / "labextension" / "src" / "kernelmemory.tsx").read_text(encoding="utf-8")
    assert _record(source, "LEVEL_LABELS") == {level.name: level.label for level in LEVELS}
    assert set(_record(source, "MECHANISM_WORDS")) == set(MECHANISMS)
    assert set(_record(source, "MECHANISM_SHORT")) == set(MECHANISMS)
    types = TYPES_TS.read_text(encoding="utf-8")
    levels = re.search(r"export type EnforcementLevel = ([^;]+);", types)[1]
    assert set(re.findall(r"'(\w+)'", levels)) == {level.name for level in LEVELS}
    mechanisms = re.search(r"export type EnforcementMechanism = ([^;]+);", types)[1]
    assert set(re.findall(r"'(\w+)'", mechanisms)) == set(MECHANISMS)

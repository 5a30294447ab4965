"""The per-notebook policy: its schema, validation and the names of its fields."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib.resources import files
from typing import Any, Iterable

import jsonschema

from jupyter_tfgpu.gpu import DeviceInfo


class PolicyError(ValueError):
    """Bad input: names the field and says why (HTTP 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CapExceeded(PermissionError):
    """A request beyond an admin cap: names the cap (HTTP 403)."""

    def __init__(self, cap: str, message: str):
        super().__init__(f"{message} (admin cap TFGPU.{cap})")
        self.cap = cap
        self.message = message


@lru_cache(maxsize=1)
def policy_schema() -> dict[str, Any]:
    """The one JSON Schema of a policy, shipped in the package."""
    return json.loads(files(__package__).joinpath("policy.schema.json").read_text())


def policy_field_names() -> tuple[str, ...]:
    """Field names in schema order."""
    return tuple(policy_schema()["properties"])


def empty_policy() -> dict[str, Any]:
    """A policy with no opinion on anything."""
    return dict.fromkeys(policy_field_names())


def _field_of(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return extra[0] if extra else "policy"
    path = [str(p) for p in error.absolute_path]
    if not path:
        return "policy"
    return path[0] + "".join(f"[{p}]" for p in path[1:])


def _message(error: jsonschema.ValidationError, field: str) -> str:
    if error.validator == "additionalProperties":
        return f"unknown field; known fields are {', '.join(policy_field_names())}"
    description = (error.schema or {}).get("title")
    hint = f" ({description})" if description and field in policy_field_names() else ""
    return f"{error.message}{hint}"


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For anyOf/oneOf errors, the alternative's error that got furthest into the value."""
    while error.context:
        deeper = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
        if len(deeper.absolute_path) <= len(error.absolute_path):
            break
        error = deeper
    return error


def validate_policy(data: Any, devices: Iterable[DeviceInfo] | None = None) -> dict[str, Any]:
    """Check a policy against the schema and, when GPUs are known, that its devices exist.

    Returns the policy with only the fields it sets.
    """
    if not isinstance(data, dict):
        raise PolicyError("policy", "expected a JSON object")
    validator = jsonschema.Draft202012Validator(policy_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        # anyOf reports one error for the whole field; the deepest sub-error names the item
        # (e.g. devices[1]) and says what is wrong with it.
        error = _deepest(errors[0])
        field = _field_of(error)
        raise PolicyError(field, _message(error, field))
    # JSON Schema counts 2.0 as an integer; nothing downstream (placement, range(), the
    # kernel's thread settings) takes a float, so make every such value a real int here.
    policy = whole_numbers_as_ints(
        {k: v for k, v in data.items() if k in policy_field_names()}, policy_schema()
    )
    if devices is not None and isinstance(policy.get("devices"), list) and policy["devices"]:
        known = list(devices)
        for n, token in enumerate(policy["devices"]):
            if resolve_device(token, known) is None:
                raise PolicyError(f"devices[{n}]", f"no GPU {token!r} on this server ({_known(known)})")
    return policy


def _allows_integer(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type", ())
    return "integer" in ([kinds] if isinstance(kinds, str) else kinds)


def whole_numbers_as_ints(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with every whole float the schema types as an integer made an int (2.0 -> 2)."""
    alternatives = [schema, *schema.get("anyOf", ()), *schema.get("oneOf", ())]
    if isinstance(value, float) and value.is_integer():
        return int(value) if any(_allows_integer(s) for s in alternatives) else value
    if isinstance(value, list):
        items = next((s["items"] for s in alternatives if isinstance(s.get("items"), dict)), None)
        return [whole_numbers_as_ints(v, items) for v in value] if items else value
    if isinstance(value, dict):
        properties = next((s["properties"] for s in alternatives if "properties" in s), {})
        return {
            k: whole_numbers_as_ints(v, properties[k]) if k in properties else v
            for k, v in value.items()
        }
    return value


def _known(devices: list[DeviceInfo]) -> str:
    if not devices:
        return "it has no GPU"
    return f"indices 0-{len(devices) - 1}"


def resolve_device(token: int | str, devices: list[DeviceInfo]) -> str | None:
    """The UUID a device index or UUID (GPU or MIG) refers to; None if it names nothing."""
    for info in devices:
        if token == info.index or token == info.uuid:
            return info.uuid
        for mig in info.mig_instances:
            if token == mig.uuid:
                return mig.uuid
    return None


def normalize_notebook_path(path: str, sep: str = os.sep) -> str:
    """A notebook's key: its path relative to the server root, '/'-separated, no '..'.

    One key per file: empty and '.' segments go (they name the same file), nothing else
    changes. A file's name is bytes, so NFC and NFD spellings are two files and two keys, and
    a backslash is part of a name, unless the OS separates with it (``sep``, Windows).
    """
    if not isinstance(path, str) or not path.strip("/"):
        raise PolicyError("path", "a notebook path is required")
    if "\x00" in path:
        raise PolicyError("path", "must not contain NUL characters")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(
            "path",
            "is not valid Unicode (a file name that is not UTF-8?); no policy can be kept for it",
        ) from None
    parts = [p for p in path.replace(sep, "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PolicyError("path", "must stay inside the server's root (no '..')")
    if not parts:  # ".", "./." and the like name the root itself, not a notebook
        raise PolicyError("path", "a notebook path is required")
    return "/".join(parts)

"""Render the OpenAPI 3.1 spec shipped in the package as Markdown (no JavaScript, no CDN).

    python docs/_tools/openapi_md.py    # print it; docs/_tools/generate.py writes it into
                                        # docs/reference/rest-api.md

Every operation gets a heading (``get-status``, ``put-policiespath``), its parameters, request
body and responses; every schema under ``components`` gets a table of its properties, with links
between them. The anchors are the headings' own slugs, the same on the docs site and on the code
host, so the page reads the same on both.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import yaml

SPEC = Path(__file__).resolve().parents[2] / "jupyter_tfgpu" / "server" / "api" / "openapi.yaml"
METHODS = ("get", "put", "post", "patch", "delete")


def load(path: Path = SPEC) -> dict[str, Any]:
    """The spec as a dict."""
    return yaml.safe_load(path.read_text())


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs (Python-Markdown's toc) and GitHub both make it."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def operation_heading(method: str, path: str) -> str:
    """``GET `/policies/{path}```: an operation's heading text."""
    return f"{method.upper()} `{path}`"


def operation_anchor(method: str, path: str) -> str:
    """``get-policiespath`` for GET /policies/{path}."""
    return slug(operation_heading(method, path).replace("`", ""))


def schema_anchor(name: str) -> str:
    """``policy`` for the Policy schema."""
    return slug(name)


def escape_html(markdown: str) -> str:
    """``<`` and ``>`` outside code spans as text, not tags (descriptions say ``<token>``)."""
    parts = re.split(r"(`[^`]*`)", markdown)
    return "".join(
        part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
        for part in parts
    )


def _one_line(text: Any) -> str:
    """A description fit for a table cell."""
    return escape_html(" ".join(str(text or "").split()).replace("|", "\\|"))


def _paragraphs(text: Any) -> str:
    """A description as Markdown paragraphs (the spec wraps lines at 100 columns)."""
    blocks = re.split(r"\n\s*\n", str(text or "").strip())
    return escape_html("\n\n".join(" ".join(block.split()) for block in blocks if block.strip()))


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _literal(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def type_of(schema: Any, link: bool = True) -> str:
    """A short Markdown description of a schema's type, named schemas linked (or just named)."""
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{schema_anchor(name)})" if link else name
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return " or ".join(type_of(option, link) for option in schema[combinator])
    if "allOf" in schema:
        return " and ".join(type_of(option, link) for option in schema["allOf"])
    if "const" in schema:
        return _literal(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_literal(v) for v in schema["enum"])
    kinds = schema.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    shown = []
    for kind in kinds:
        if kind == "array":
            shown.append(f"array of {type_of(schema.get('items'), link)}")
        elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
            shown.append(f"object of {type_of(schema['additionalProperties'], link)}")
        else:
            shown.append(str(kind))
    return " or ".join(shown)


def constraints(schema: Any) -> str:
    """Bounds, patterns and defaults, as a short sentence."""
    if not isinstance(schema, dict):
        return ""
    said = []
    for key, word in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in schema:
            said.append(f"{word} {schema[key]}")
    for key, word in (("minItems", "at least"), ("maxItems", "at most")):
        if key in schema:
            said.append(f"{word} {schema[key]} items")
    if schema.get("uniqueItems"):
        said.append("unique items")
    if "pattern" in schema:
        said.append(f"matches `{schema['pattern']}`")
    if "default" in schema:
        said.append(f"default {_literal(schema['default'])}")
    return "; ".join(said)


def _resolve(spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (responses, parameters)."""
    while isinstance(item, dict) and "$ref" in item:
        node: Any = spec
        for part in item["$ref"].lstrip("#/").split("/"):
            node = node[part]
        item = node
    return item


def _content_schema(body: dict[str, Any]) -> str:
    content = body.get("content") or {}
    if not content:
        return ""
    media, entry = next(iter(content.items()))
    return f"{type_of(entry.get('schema'))} (`{media}`)"


def _security(spec: dict[str, Any], operation: dict[str, Any]) -> str:
    requirements = operation.get("security", spec.get("security")) or []
    names = [name for requirement in requirements for name in requirement]
    return ", ".join(f"[{n}](#authentication)" for n in names) or "none"


def render_operation(
    spec: dict[str, Any], path: str, method: str, operation: dict[str, Any], shared: list
) -> list[str]:
    """One operation: heading, text, parameters, body, responses."""
    lines = [f"### {operation_heading(method, path)}", ""]
    if operation.get("summary"):
        lines += [_paragraphs(operation["summary"]) + ".", ""]
    if operation.get("description"):
        lines += [_paragraphs(operation["description"]), ""]
    lines += [f"Credentials: {_security(spec, operation)}.", ""]
    parameters = [_resolve(spec, p) for p in [*shared, *operation.get("parameters", [])]]
    if parameters:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in parameters:
            extra = constraints(p.get("schema"))
            text = _one_line(p.get("description")) + (f" ({extra})" if extra else "")
            lines.append(
                f"| `{p['name']}` | {p['in']} | {type_of(p.get('schema'))} | "
                f"{'yes' if p.get('required') else 'no'} | {text} |"
            )
        lines.append("")
    if "requestBody" in operation:
        body = _resolve(spec, operation["requestBody"])
        required = "required" if body.get("required") else "optional"
        lines += [f"Request body ({required}): {_content_schema(body)}.", ""]
        if body.get("description"):
            lines += [_paragraphs(body["description"]), ""]
    lines += ["| status | meaning | body |", "|---|---|---|"]
    for status, response in (operation.get("responses") or {}).items():
        response = _resolve(spec, response)
        lines.append(
            f"| {status} | {_one_line(response.get('description'))} | {_content_schema(response) or '–'} |"
        )
    lines.append("")
    return lines


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    """One component schema: its type, description and property table."""
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [_paragraphs(schema["description"]), ""]
    properties = schema.get("properties") or {}
    if not properties:
        extra = constraints(schema)
        lines += [f"Type: {type_of(schema)}" + (f" ({extra})" if extra else "") + ".", ""]
        return lines
    required = set(schema.get("required") or [])
    lines += ["| field | type | required | description |", "|---|---|---|---|"]
    for field, sub in properties.items():
        sub = sub if isinstance(sub, dict) else {}
        text = _one_line(sub.get("description") or sub.get("title"))
        extra = constraints(sub)
        if extra:
            text = f"{text} ({extra})" if text else extra
        lines.append(
            f"| `{field}` | {type_of(sub)} | {'yes' if field in required else 'no'} | {text} |"
        )
    lines.append("")
    if schema.get("additionalProperties") is False:
        lines += ["No other fields are accepted.", ""]
    return lines


def render(spec: dict[str, Any]) -> str:
    """The whole reference page (without a title: the page around it has one)."""
    info = spec.get("info", {})
    base = (spec.get("servers") or [{}])[0].get("url", "")
    generated = (
        f"*Generated from `jupyter_tfgpu/server/api/openapi.yaml` (OpenAPI {spec.get('openapi')}, "
        f"API version {info.get('version')}) by `python docs/_tools/generate.py`.*"
    )
    lines = [
        generated,
        "",
        _paragraphs(info.get("description")),
        "",
        f"The paths below are relative to `{{base_url}}{base.strip('/')}/`.",
        "",
        "## Endpoints",
        "",
        "| method | path | what |",
        "|---|---|---|",
    ]
    paths = spec.get("paths") or {}
    for path, item in paths.items():
        for method in METHODS:
            if method in item:
                summary = _one_line(item[method].get("summary"))
                lines.append(
                    f"| {method.upper()} | [`{path}`](#{operation_anchor(method, path)}) | {summary} |"
                )
    lines += ["", "## Authentication", "", "| scheme | how |", "|---|---|"]
    for name, scheme in (spec.get("components", {}).get("securitySchemes") or {}).items():
        where = f"{scheme.get('in', '')} `{scheme.get('name', '')}`".strip()
        lines.append(f"| `{name}` | {where}: {_one_line(scheme.get('description'))} |")
    lines += ["", "## Operations", ""]
    for path, item in paths.items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method in item:
                lines += render_operation(spec, path, method, item[method], shared)
    lines += ["## Schemas", ""]
    for name, schema in (spec.get("components", {}).get("schemas") or {}).items():
        lines += render_schema(name, schema)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(load()))

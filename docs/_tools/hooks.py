"""MkDocs hooks: pages generated from the sources at build time, so the docs cannot drift.

A page asks for generated content with a marker comment on a line of its own:

- ``<!-- tfgpu:settings -->``: the admin settings table, from the ``TFGPU`` traits' ``help=``
  (``scripts/config_table.py``, the same table as in the README);
- ``<!-- tfgpu:openapi -->``: the REST API reference, from ``jupyter_tfgpu/openapi.yaml``;
- ``<!-- tfgpu:policy-fields -->``: the policy fields, from ``policy.schema.json``, with their
  ``%tfgpu policy`` options;
- ``<!-- tfgpu:event-fields -->``: the enforcement event's fields, from its event schema;
- ``<!-- tfgpu:image FILE "alt text" -->``: a screenshot from ``docs/images/`` if it is there;
  otherwise a note, so the site builds before the screenshots exist.

A link from a page to a file of the repository outside ``docs/`` (``../benchmarks/README.md``)
cannot be served by the site: it becomes a link into the repository when ``repo_url`` is set,
else the file's path in the repository. A link to a file that does not exist is left alone, so
the strict build still fails on it. An unknown marker fails the build.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

TOOLS = Path(__file__).resolve().parent
DOCS = TOOLS.parent
ROOT = DOCS.parent
PACKAGE = ROOT / "jupyter_tfgpu"

MARKER = re.compile(r"^<!-- tfgpu:(?P<name>[a-z-]+)(?P<args>[^>]*?)\s*-->$", re.MULTILINE)
# Markdown links and images whose target is a relative path (not a URL, not an anchor).
LINK = re.compile(
    r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>(?![a-z][a-z0-9+.-]*:|#|/)[^)\s]+)\)"
)


def _load(name: str, path: Path) -> Any:
    """Import a module from a file (the tools are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_table() -> str:
    """The admin settings table, generated from the traits' help by scripts/config_table.py."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    table = _load("config_table", ROOT / "scripts" / "config_table.py").table()
    return _openapi_md().escape_html(table)


@functools.lru_cache(maxsize=1)
def _openapi_md() -> Any:
    """The OpenAPI renderer (its type and text helpers serve the other tables too)."""
    return _load("openapi_md", TOOLS / "openapi_md.py")


def openapi_reference() -> str:
    """The REST API reference page body."""
    openapi_md = _openapi_md()
    return openapi_md.render(openapi_md.load())


def _cell(text: Any) -> str:
    return _openapi_md().escape_html(" ".join(str(text or "").split()).replace("|", "\\|"))


def policy_fields_table() -> str:
    """Field, %tfgpu option, type and meaning of every policy field, from the policy schema."""
    schema = json.loads((PACKAGE / "policy" / "policy.schema.json").read_text())
    openapi_md = _openapi_md()
    options = _magic_options()
    rows = ["| field | `%tfgpu policy` option | type | what it does |", "|---|---|---|---|"]
    for name, field in schema["properties"].items():
        option = options.get(name)
        shown = f"`--{option}`" if option else "–"
        kind = openapi_md.type_of(field, link=False)
        extra = openapi_md.constraints(field)
        text = _cell(field.get("description")) + (f" ({extra})" if extra else "")
        rows.append(f"| `{name}` | {shown} | {kind} | **{_cell(field.get('title'))}.** {text} |")
    return "\n".join(rows)


def _magic_options() -> dict[str, str]:
    """The magic's option name per field (the magic reads the same schema)."""
    try:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from jupyter_tfgpu.kernel.policy_fields import policy_fields
    except ImportError:
        return {}
    return {field.name: field.option for field in policy_fields()}


def event_fields_table() -> str:
    """The fields of the enforcement event, from its jupyter_events schema."""
    schema = yaml.safe_load((PACKAGE / "events" / "enforcement.yaml").read_text())
    openapi_md = _openapi_md()
    required = set(schema.get("required") or [])
    rows = [
        f"Schema id `{schema['$id']}`, version {schema.get('version')}.",
        "",
        "| field | type | always there | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in schema["properties"].items():
        rows.append(
            f"| `{name}` | {openapi_md.type_of(field, link=False)} | {'yes' if name in required else 'no'} | "
            f"{_cell(field.get('description'))} |"
        )
    return "\n".join(rows)


def image(args: str, page_path: str) -> str:
    """A screenshot from docs/images/ when it exists, else a note saying it is not there yet."""
    words = shlex.split(args)
    if not words:
        raise PluginError(f"{page_path}: tfgpu:image needs a file name")
    name, alt = words[0], (words[1] if len(words) > 1 else words[0])
    if (DOCS / "images" / name).exists():
        relative = os.path.relpath(DOCS / "images" / name, (DOCS / page_path).parent)
        return f"![{alt}]({Path(relative).as_posix()})"
    return f'!!! note "Screenshot not in this build"\n    `docs/images/{name}`: {alt}.'


GENERATED = {
    "settings": lambda args, page: settings_table(),
    "openapi": lambda args, page: openapi_reference(),
    "policy-fields": lambda args, page: policy_fields_table(),
    "event-fields": lambda args, page: event_fields_table(),
    "image": image,
}


def expand_markers(markdown: str, page_path: str) -> str:
    """Replace every marker with what it asks for."""

    def replace(match: re.Match) -> str:
        make = GENERATED.get(match["name"])
        if make is None:
            raise PluginError(f"{page_path}: unknown marker tfgpu:{match['name']}")
        return make(match["args"].strip(), page_path)

    return MARKER.sub(replace, markdown)


def outside_links(markdown: str, page_path: str, repo_url: str | None) -> str:
    """Links to repository files outside docs/: into the repository, or their path."""

    def replace(match: re.Match) -> str:
        target, _, anchor = match["target"].partition("#")
        resolved = Path(os.path.normpath((DOCS / page_path).parent / target))
        try:
            resolved.relative_to(DOCS)
            return match[0]  # a page or file of the site: MkDocs checks it
        except ValueError:
            pass
        try:
            in_repo = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            return match[0]
        if not resolved.exists() or match["bang"]:
            return match[0]  # left for MkDocs to report
        if repo_url:
            kind = "tree" if resolved.is_dir() else "blob"
            url = f"{repo_url.rstrip('/')}/{kind}/HEAD/{in_repo}" + (f"#{anchor}" if anchor else "")
            return f"[{match['text']}]({url})"
        return f"{match['text']} (`{in_repo}` in the repository)"

    return LINK.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: generated content in, links out of the site rewritten."""
    path = page.file.src_uri
    markdown = expand_markers(markdown, path)
    return outside_links(markdown, path, config.get("repo_url"))

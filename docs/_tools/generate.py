"""Write the docs' generated tables into the pages themselves, between marker comments.

    python docs/_tools/generate.py           # refresh every generated block in docs/
    python docs/_tools/generate.py --check   # exit 1, naming the pages, if one is out of date

A page holds a generated block as

    <!-- generated:NAME:begin -->
    ...
    <!-- generated:NAME:end -->

(or ``<!-- generated:NAME ARGUMENT:begin -->`` for a block that takes one), and this script
rewrites what is between the markers; the rest of the page is left as it is.
The tables are in the Markdown files, so the pages read the same on the code host as on the
site, and ``tests/project/test_docs.py`` fails when one is out of date (as ``tests/project/test_readme.py`` does
for the README's settings table, which is the same table as in the settings reference). NAME is:

- ``settings``: every ``TFGPU`` setting, from the traits' ``help=`` (``scripts/config_table.py``);
- ``openapi``: the REST API reference, from ``jupyter_tfgpu/server/api/openapi.yaml``;
- ``caps``: the admin caps a policy write can be refused (403) by, from the code that refuses it;
- ``policy-fields``: the policy fields, from ``policy.schema.json``, with their ``%tfgpu policy``
  options;
- ``event-fields``: the enforcement event's fields, from its event schema;
- ``metrics``: every Prometheus series, from ``SERIES`` in ``jupyter_tfgpu/server/metrics.py``;
- ``enforcement-levels``: what each level of "how a cap is enforced" means, stops and does not
  stop, from ``LEVELS`` in ``jupyter_tfgpu/policy/cap_enforcement.py``;
- ``example FILE``: the file ``docs/examples/FILE`` whole, in a code block. The example files are
  what ``tests/project/test_docs_run.py`` runs and what the site offers for download; the copy in
  the page is what an admin reading the repository sees.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

TOOLS = Path(__file__).resolve().parent
DOCS = TOOLS.parent
ROOT = DOCS.parent
PACKAGE = ROOT / "jupyter_tfgpu"

BLOCK = re.compile(
    r"(?P<begin><!-- generated:(?P<name>[a-z-]+)(?: (?P<argument>[^\s:]+))?:begin -->\n)"
    r"(?P<body>.*?)(?P<end><!-- generated:(?P=name):end -->)",
    re.DOTALL,
)
EXAMPLES = DOCS / "examples"
LANGUAGES = {".py": "python", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".sh": "bash"}


def _load(name: str, path: Path) -> Any:
    """Import a module from a file (the tools are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _on_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=1)
def openapi_md() -> Any:
    """The OpenAPI renderer (its type and text helpers serve the other tables too)."""
    return _load("openapi_md", TOOLS / "openapi_md.py")


def _cell(text: Any) -> str:
    return openapi_md().escape_html(" ".join(str(text or "").split()).replace("|", "\\|"))


def settings_table() -> str:
    """The admin settings table, as scripts/config_table.py makes it for the README."""
    _on_path()
    table = _load("config_table", ROOT / "scripts" / "config_table.py").table()
    return openapi_md().escape_html(table)


def openapi_reference() -> str:
    """The REST API reference, from the spec shipped in the package."""
    return openapi_md().render(openapi_md().load())


def admin_caps() -> list[str]:
    """Every cap the server refuses a policy by: the first argument of each ``CapExceeded(...)``."""
    caps: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "CapExceeded"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value not in caps
            ):
                caps.append(node.args[0].value)
    return caps


def caps_list() -> str:
    """One line per admin cap: its setting and the first sentence of its help."""
    _on_path()
    from jupyter_tfgpu.server.config import TFGPU

    traits = TFGPU.class_traits(config=True)
    source = inspect.getsource(TFGPU)
    lines = []
    for cap in sorted(admin_caps(), key=lambda name: source.find(f"    {name} = ")):
        help_text = " ".join(inspect.cleandoc(traits[cap].help).split())
        first = re.split(r"(?<=\.)\s+(?=[A-Z])", help_text, maxsplit=1)[0]
        lines.append(f"- `TFGPU.{cap}`: {_cell(first)}")
    return "\n".join(lines)


def policy_fields_table() -> str:
    """Field, %tfgpu option, type and meaning of every policy field, from the policy schema."""
    schema = json.loads((PACKAGE / "policy" / "policy.schema.json").read_text())
    render = openapi_md()
    _on_path()
    from jupyter_tfgpu.in_kernel.policy_fields import policy_fields

    options = {field.name: field.option for field in policy_fields()}
    rows = ["| field | `%tfgpu policy` option | type | what it does |", "|---|---|---|---|"]
    for name, field in schema["properties"].items():
        shown = f"`--{options[name]}`" if name in options else "–"
        kind = render.type_of(field, link=False)
        extra = render.constraints(field)
        text = _cell(field.get("description")) + (f" ({extra})" if extra else "")
        rows.append(f"| `{name}` | {shown} | {kind} | **{_cell(field.get('title'))}.** {text} |")
    return "\n".join(rows)


def event_fields_table() -> str:
    """The fields of the enforcement event, from its jupyter_events schema."""
    schema = yaml.safe_load((PACKAGE / "server" / "events" / "enforcement.yaml").read_text())
    render = openapi_md()
    required = set(schema.get("required") or [])
    rows = [
        f"Schema id `{schema['$id']}`, version {schema.get('version')}.",
        "",
        "| field | type | always there | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in schema["properties"].items():
        rows.append(
            f"| `{name}` | {render.type_of(field, link=False)} | "
            f"{'yes' if name in required else 'no'} | {_cell(field.get('description'))} |"
        )
    return "\n".join(rows)


def metrics_table() -> str:
    """Every Prometheus series, from the catalogue the collector builds them from."""
    _on_path()
    from jupyter_tfgpu.server.metrics import SERIES

    rows = ["| series | type | labels | what |", "|---|---|---|---|"]
    for series in SERIES:
        labels = ", ".join(f"`{label}`" for label in series.labels) or "none"
        rows.append(f"| `{series.name}` | {series.kind} | {labels} | {_cell(series.help)} |")
    return "\n".join(rows)


def enforcement_levels_table() -> str:
    """What each enforcement level means, stops and does not stop, from its one definition."""
    _on_path()
    from jupyter_tfgpu.policy.cap_enforcement import LEVELS

    rows = [
        "| level | shown as | what it means | what it stops | what it does not stop |",
        "|---|---|---|---|---|",
    ]
    for level in LEVELS:
        rows.append(
            f"| `{level.name}` | {_cell(level.label)} | {_cell(level.meaning)} | "
            f"{_cell(level.stops)} | {_cell(level.does_not_stop)} |"
        )
    return "\n".join(rows)


def example(name: str) -> str:
    """One file of docs/examples/, whole, in a fenced code block."""
    path = EXAMPLES / name
    if path.parent != EXAMPLES or not path.is_file():
        raise ValueError(f"no example file docs/examples/{name}")
    text = path.read_text()
    return f"```{LANGUAGES.get(path.suffix, '')}\n{text.rstrip()}\n```"


GENERATED: dict[str, Callable[..., str]] = {
    "settings": settings_table,
    "openapi": openapi_reference,
    "caps": caps_list,
    "policy-fields": policy_fields_table,
    "event-fields": event_fields_table,
    "metrics": metrics_table,
    "enforcement-levels": enforcement_levels_table,
    "example": example,
}
# The blocks that take an argument (a file name); the others take none.
TAKES_ARGUMENT = {"example"}


def regenerate(markdown: str, where: str = "page") -> str:
    """The page with every generated block made anew from the sources."""

    def replace(match: re.Match) -> str:
        name, argument = match["name"], match["argument"]
        make = GENERATED.get(name)
        if make is None:
            raise ValueError(f"{where}: unknown generated block {name!r}")
        if (argument is not None) != (name in TAKES_ARGUMENT):
            takes = "one" if name in TAKES_ARGUMENT else "no"
            raise ValueError(f"{where}: generated block {name!r} takes {takes} argument")
        body = (make(argument) if argument is not None else make()).strip("\n")
        return f"{match['begin']}{body}\n{match['end']}"

    return BLOCK.sub(replace, markdown)


def pages() -> list[Path]:
    """The docs pages that hold a generated block."""
    return [p for p in sorted(DOCS.rglob("*.md")) if BLOCK.search(p.read_text())]


def stale_pages() -> list[Path]:
    """The pages whose generated blocks differ from what the sources make now."""
    return [page for page in pages() if regenerate(page.read_text(), str(page)) != page.read_text()]


def main(argv: list[str] | None = None) -> int:
    """Write the generated blocks, or check them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which pages are stale")
    args = parser.parse_args(argv)
    stale = stale_pages()
    if args.check:
        for page in stale:
            print(f"{page.relative_to(ROOT)}: out of date, run python docs/_tools/generate.py")
        return 1 if stale else 0
    for page in stale:
        page.write_text(regenerate(page.read_text(), str(page)))
        print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

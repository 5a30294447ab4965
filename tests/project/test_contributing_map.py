"""CONTRIBUTING.md's map names every module of the package and the lab extension.

The map is the code block under "## The map". Every ``.py`` file of ``jupyter_tfgpu/`` and every
``.ts``/``.tsx`` file of ``labextension/src/`` (tests aside) is named in it by its file name; a
name several modules share (``views.py``) is named once for each. A package's ``__init__.py`` is
the package, which the map names by its folder.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (("jupyter_tfgpu", (".py",)), ("labextension/src", (".ts", ".tsx")))
NOT_MODULES = ("__pycache__", "__tests__", "node_modules")


def map_block(text: str) -> str:
    """The code block under the "## The map" heading."""
    match = re.search(r"^## The map[^\n]*\n+```[^\n]*\n(.*?)\n```", text, re.S | re.M)
    assert match, "CONTRIBUTING.md has no code block under '## The map'"
    return match.group(1)


def modules(root: Path = ROOT) -> list[Path]:
    """The modules the map must name."""
    found = []
    for folder, suffixes in SOURCES:
        for path in sorted((root / folder).rglob("*")):
            parts = set(path.relative_to(root).parts)
            if path.suffix in suffixes and path.name != "__init__.py" and not parts & set(NOT_MODULES):
                found.append(path)
    return found


def unnamed(block: str, paths: list[Path], root: Path = ROOT) -> list[str]:
    """The modules whose file name the map names fewer times than there are modules of that name."""
    by_name = collections.defaultdict(list)
    for path in paths:
        by_name[path.name].append(path)
    missing = []
    for name, same in sorted(by_name.items()):
        named = len(re.findall(rf"(?<![\w.]){re.escape(name)}(?!\w)", block))
        if named < len(same):
            missing += [f"{p.relative_to(root)} (named {named} of {len(same)} times)" for p in same]
    return missing


def test_the_map_names_every_module():
    """Each module of the package and the lab extension is named in CONTRIBUTING's map."""
    block = map_block((ROOT / "CONTRIBUTING.md").read_text())
    missing = unnamed(block, modules())
    assert not missing, "name these in CONTRIBUTING.md's map:\n" + "\n".join(missing)


def test_the_walk_finds_the_modules():
    """The walk sees both trees, and leaves out tests and packages' __init__.py."""
    found = {str(p.relative_to(ROOT)) for p in modules()}
    assert {"jupyter_tfgpu/protocol.py", "labextension/src/index.ts", "labextension/src/panel.tsx"} <= found
    assert not [p for p in found if "__tests__" in p or p.endswith("__init__.py")]


def test_a_module_the_map_does_not_name_is_reported(tmp_path):
    """A new module, and a second module of a name the map gives once, are both reported."""
    for relative in ("jupyter_tfgpu/a/views.py", "jupyter_tfgpu/b/views.py", "jupyter_tfgpu/new.py",
                     "labextension/src/panel.tsx"):  # fmt: skip
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    block = "jupyter_tfgpu/\n  a/  views.py (one)\nlabextension/src/  panel.tsx, format.ts"
    assert unnamed(block, modules(tmp_path), tmp_path) == [
        "jupyter_tfgpu/new.py (named 0 of 1 times)",
        "jupyter_tfgpu/a/views.py (named 1 of 2 times)",
        "jupyter_tfgpu/b/views.py (named 1 of 2 times)",
    ]

"""No source file is over 400 lines unless it argues its size.

Every Python and TypeScript source file of ``jupyter_tfgpu/``, ``labextension/src/``,
``scripts/``, ``benchmarks/`` and ``docs/_tools/`` is held to it: a module that long most often
does several jobs, and splits by job into modules beside it. A file that reads better whole says
why in its module docstring (for TypeScript, its first comment), in a sentence that starts with
"Its size:".

Tests are not held to it (``tests/`` and the lab extension's ``src/__tests__/``): a test module is
read one test at a time, and splitting it scatters the fixtures its tests share.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400
FOLDERS = ("jupyter_tfgpu", "labextension/src", "scripts", "benchmarks", "docs/_tools")
SUFFIXES = (".py", ".ts", ".tsx")
NOT_SOURCE = ("__tests__", "__pycache__", "node_modules")
# "Its size:" opens the text or a sentence, and something follows it.
ARGUED = re.compile(r"(?:^|[.!?]\s)Its size:\s*\S")
# A TypeScript file's first comment: one /* ... */ block, or a run of // lines.
FIRST_COMMENT = re.compile(
    r"\A\s*(?:/\*(?P<block>.*?)\*/|(?P<lines>(?://[^\n]*(?:\n|\Z)\s*)+))", re.S
)


def sources() -> list[Path]:
    """The source files held to the limit."""
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if path.suffix in SUFFIXES and path.is_file() and not set(parts) & set(NOT_SOURCE):
                found.append(path)
    return found


def opening_text(path: Path, text: str) -> str:
    """A Python module's docstring, or a TypeScript file's first comment, on one line."""
    if path.suffix == ".py":
        opening = ast.get_docstring(ast.parse(text)) or ""
    else:
        match = FIRST_COMMENT.match(text)
        if match is None:
            return ""
        if match["block"] is not None:
            opening = re.sub(r"(?m)^\s*\*", "", match["block"])
        else:
            opening = re.sub(r"(?m)^\s*//", "", match["lines"])
    return " ".join(opening.split())


def argues_its_size(path: Path, text: str) -> bool:
    """Whether the docstring (first comment) has a sentence starting "Its size:"."""
    return bool(ARGUED.search(opening_text(path, text)))


def over_the_limit() -> list[str]:
    """``path: N lines`` of each source file over the limit that does not argue its size."""
    over = []
    for path in sources():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > LIMIT and not argues_its_size(path, text):
            over.append(f"{path.relative_to(ROOT)}: {lines} lines")
    return over


def test_the_folders_hold_sources():
    """The walk finds the files it is meant for (a renamed folder fails here, not silently)."""
    found = {str(path.relative_to(ROOT)) for path in sources()}
    for expected in (
        "jupyter_tfgpu/protocol.py",
        "labextension/src/index.ts",
        "labextension/src/panel.tsx",
        "scripts/api_capture.py",
        "benchmarks/bench_reliability.py",
        "docs/_tools/generate.py",
    ):
        assert expected in found
    assert not [name for name in found if "__tests__" in name]


def test_no_source_file_is_over_the_limit_unless_it_argues_its_size():
    """Every source file is at most 400 lines, or its docstring says why it is longer."""
    over = over_the_limit()
    assert not over, "split by job, or argue the size in the docstring:\n" + "\n".join(over)


@pytest.mark.parametrize(
    "name, text, argued",
    [
        ("a.py", '"""Reads a file.\n\nIts size: one state machine, read top to bottom."""\n', True),
        ("a.py", '"""Its size: the table of every setting, one row each."""\n', True),
        ("a.py", '"""Reads a file. Its size: one parser."""\n', True),
        ("a.py", '"""Reads a file; keep its size: small."""\n', False),
        ("a.py", '"""Reads a file.\n\nIts size:\n"""\n', False),  # no reason given
        ("a.py", 'x = 1\n"""Its size: not the module docstring."""\n', False),
        ("a.py", '# Its size: a comment, not the docstring.\n"""Reads."""\n', False),
        ("a.ts", "/**\n * The panel.\n *\n * Its size: one React tree.\n */\nexport {};\n", True),
        ("a.ts", "// The panel.\n// Its size: one React tree.\nexport {};\n", True),
        ("a.tsx", "/* The panel. */\n// Its size: a second comment.\nexport {};\n", False),
        ("a.ts", "export {};\n/** Its size: not the first thing in the file. */\n", False),
    ],
)
def test_a_size_is_argued_only_by_a_sentence_of_the_docstring(name, text, argued):
    """"Its size:" counts where it opens a sentence of the docstring (first comment) and says why."""
    assert argues_its_size(Path(name), text) is argued


def test_a_long_file_that_does_not_argue_its_size_is_reported(tmp_path, monkeypatch):
    """A file over the limit is named with its length; one that argues its size is not."""
    # Given two long modules, one of which argues its size
    folder = tmp_path / "jupyter_tfgpu"
    folder.mkdir()
    body = "x = 1\n" * LIMIT
    (folder / "long.py").write_text('"""Does several things."""\n' + body)
    (folder / "argued.py").write_text('"""One table. Its size: one row per setting."""\n' + body)
    (folder / "short.py").write_text('"""Short."""\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "FOLDERS", ("jupyter_tfgpu",))
    # Then only the one that does not is reported, with its length
    assert over_the_limit() == [f"jupyter_tfgpu/long.py: {LIMIT + 1} lines"]

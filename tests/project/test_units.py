"""MiB and GiB are defined once on each side of the process boundary: ``gpu/backend.py`` for the
server side (gpu/, policy/, server/), ``in_kernel/units.py`` for the kernel side; every other
module imports them. The bootstrap runs in any Python and imports nothing of the package: it
keeps its own. (The lab defines its own once, in ``labextension/src/format.ts``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jupyter_tfgpu"
HOMES = {PACKAGE / "gpu" / "backend.py", PACKAGE / "in_kernel" / "units.py"}
BOOTSTRAP = PACKAGE / "in_kernel" / "bootstrap"
NAMES = {"MiB", "MIB", "GiB", "GIB"}


def written_out(source: str) -> list[int]:
    """The lines that define MiB or GiB (any spelling), or write 2**20 or 2**30 out."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id.strip("_") in NAMES for t in targets):
                lines.add(node.lineno)
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Pow)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.right, ast.Constant)
            and (node.left.value, node.right.value) in ((2, 20), (2, 30))
        ):
            lines.add(node.lineno)
    return sorted(lines)


def modules() -> list[Path]:
    """The package's modules held to it: all but the two homes and the bootstrap."""
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in HOMES and BOOTSTRAP not in path.parents
    ]


def test_mib_and_gib_are_defined_once_on_each_side():
    """Only the two homes define MiB and GiB; no other module writes 2**20 or 2**30 out."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules()
        for line in written_out(path.read_text())
    ]
    assert not found, "import MiB / GiB from their side's home instead:\n" + "\n".join(found)


def test_each_home_defines_both():
    """gpu/backend.py and in_kernel/units.py each define MiB and GiB."""
    for home in HOMES:
        assert len(written_out(home.read_text())) >= 2, home


def test_a_unit_written_out_is_found():
    """A definition of the unit, or a product with 2**20, is found; a text that says it is not."""
    source = 'MIB = 2**20\nx = limit * 2**30\ny = "2**20 in a text"\nz = 1 << 20\n'
    assert written_out(source) == [1, 2]

"""The layers hold: who may import whom, read from the source with ``ast`` (nothing is imported);
and no module imports, through others, one that imports it (no import circle).

Every ``import`` and ``from ... import`` counts, at any depth (inside functions too), and so does
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. Relative imports
are resolved against the module's own package.
"""

from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jupyter_tfgpu"
# A folder the provisioner puts on the kernel's PYTHONPATH, not a package: its modules are
# imported by their file names.
BOOTSTRAP = PACKAGE / "in_kernel" / "bootstrap"


@dataclass(frozen=True)
class Import:
    """One imported name as written in a module: ``a.b`` for ``import a.b``, ``a.b.c`` for
    ``from a.b import c`` (c may be a submodule or a name in it)."""

    name: str
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``: no import at run time
    guarded: bool  # in a ``try:`` whose ``except`` catches ImportError: optional, fails soft


@dataclass(frozen=True)
class Rule:
    """Modules matching ``files`` may not import ``forbidden`` (or, with ``allowed``, anything of
    the package outside it)."""

    name: str
    files: tuple[str, ...]  # globs relative to the package folder
    why: str
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None  # where set: the only jupyter_tfgpu modules allowed
    excluded: tuple[str, ...] = ()  # globs taken out of ``files``
    guarded_ok: tuple[str, ...] = ()  # allowed despite ``forbidden`` when the import is guarded
    type_only_ok: bool = False
    no_imports: bool = False  # nothing at all but ``from __future__``


RULES = (
    Rule(
        "kernel bootstrap imports nothing of the package",
        files=("in_kernel/bootstrap/*.py",),
        why="it runs in any Python (sitecustomize), where jupyter_tfgpu may not be installed",
        forbidden=("jupyter_tfgpu",),
        # tfgpu_magic hands %tfgpu to the kernel side when this Python has the package, and
        # registers a stub saying how to install it when the import fails
        guarded_ok=("jupyter_tfgpu.in_kernel",),
    ),
    Rule(
        "kernel side imports nothing of the server side",
        files=("in_kernel/**/*.py", "widgets.py"),
        excluded=("in_kernel/bootstrap/*.py",),
        why="it runs inside kernels: only the protocol and other kernel-side modules",
        allowed=("jupyter_tfgpu.protocol", "jupyter_tfgpu.in_kernel"),
    ),
    Rule(
        "GPU backends know nothing of Jupyter or policies",
        files=("gpu/**/*.py",),
        why="the backends are plain Python over NVML (or simulated), usable without a server",
        forbidden=("jupyter_server", "tornado", "jupyter_tfgpu.server", "jupyter_tfgpu.policy"),
    ),
    Rule(
        "policy logic knows nothing of tornado or the server",
        files=("policy/**/*.py",),
        why="policies are domain logic, tested and used without a web layer",
        forbidden=("tornado", "jupyter_server", "jupyter_tfgpu.server"),
    ),
    Rule(
        "the protocol imports nothing",
        files=("protocol.py",),
        why="both sides of the process boundary import it; it must stay dependency-free",
        no_imports=True,
    ),
    Rule(
        "API handlers do not import the app",
        files=("server/api/*.py",),
        why="handlers reach the services through self.settings; the app imports the routes",
        forbidden=("jupyter_tfgpu.server.app",),
        type_only_ok=True,  # a type annotation is no dependency at run time
    ),
    Rule(
        "only the app imports the HTTP edge",
        files=("server/**/*.py",),
        excluded=("server/api/*.py", "server/app.py"),
        why="api/ is handlers, routes and the spec; the services beside it know nothing of HTTP",
        forbidden=("jupyter_tfgpu.server.api",),
        type_only_ok=True,
    ),
)


def module_name(path: Path) -> str:
    """``jupyter_tfgpu.in_kernel.client`` for jupyter_tfgpu/in_kernel/client.py."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _guarded_lines(tree: ast.Module) -> set[int]:
    """Lines in the body of a ``try:`` whose handlers catch a failed import."""
    catching = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            handler.type is None
            or {getattr(t, "id", None) for t in getattr(handler.type, "elts", [handler.type])}
            & catching
            for handler in node.handlers
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source``, the module ``module`` (a package when ``is_package``)."""
    tree = ast.parse(source)
    type_only, guarded = _type_checking_lines(tree), _guarded_lines(tree)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [
                (f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno)
                for alias in node.names
            ]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno))
    return [Import(name, line, line in type_only, line in guarded) for name, line in found]


def within(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or inside it, compared by dotted parts."""
    return name == prefix or name.startswith(prefix + ".")


def broken(rule: Rule, imported: Import) -> bool:
    """Whether one import breaks the rule."""
    if imported.type_only and rule.type_only_ok:
        return False
    if imported.guarded and any(within(imported.name, prefix) for prefix in rule.guarded_ok):
        return False
    if rule.no_imports:
        return not within(imported.name, "__future__")
    if any(within(imported.name, prefix) for prefix in rule.forbidden):
        return True
    if rule.allowed is not None and within(imported.name, "jupyter_tfgpu"):
        return not any(within(imported.name, prefix) for prefix in rule.allowed)
    return False


def files_of(rule: Rule) -> list[Path]:
    """The package's modules the rule covers."""
    chosen = {p for pattern in rule.files for p in PACKAGE.glob(pattern)}
    chosen -= {p for pattern in rule.excluded for p in PACKAGE.glob(pattern)}
    return sorted(chosen)


def violations(rule: Rule, path: Path, source: str | None = None) -> list[str]:
    """One line per import in ``path`` that breaks the rule: file, line, import, and why not."""
    text = path.read_text() if source is None else source
    found = imports_of(text, module_name(path), path.name == "__init__.py")
    where = path.relative_to(ROOT)
    return [
        f"{where}:{i.line}: imports {i.name}{' (under TYPE_CHECKING)' if i.type_only else ''}"
        f" -- {rule.name}: {rule.why}"
        for i in found
        if broken(rule, i)
    ]


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_the_package_keeps_the_rule(rule):
    """No module of the package breaks the rule."""
    # Given the modules the rule covers (a rule that covers nothing would pass vacuously)
    files = files_of(rule)
    assert files, f"{rule.name}: no file matches {rule.files}"
    # When their imports are read
    found = [line for path in files for line in violations(rule, path)]
    # Then none breaks it
    assert not found, "\n".join(found)


# A forbidden import for each rule, written into a module the rule covers: the rule must see it.
BAD = {
    "kernel bootstrap imports nothing of the package": (
        "in_kernel/bootstrap/tfgpu_report.py",
        "def f():\n    from jupyter_tfgpu import protocol\n",
    ),
    "kernel side imports nothing of the server side": (
        "in_kernel/client.py",
        "import os\nfrom jupyter_tfgpu.server.kernels.channel import AUTH_SCHEME\n",
    ),
    "GPU backends know nothing of Jupyter or policies": (
        "gpu/nvml.py",
        "import os\n\nfrom tornado import web\n",
    ),
    "policy logic knows nothing of tornado or the server": (
        "policy/service.py",
        "from ..server.app import TFGPUApp\n",
    ),
    "the protocol imports nothing": (
        "protocol.py",
        "from __future__ import annotations\nimport os\n",
    ),
    "API handlers do not import the app": (
        "server/api/handlers.py",
        "import importlib\n\napp = importlib.import_module('jupyter_tfgpu.server.app')\n",
    ),
    "only the app imports the HTTP edge": (
        "server/services.py",
        "from jupyter_tfgpu.server.api.handlers import SERVICES_KEY\n",
    ),
}


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_each_rule_can_fail(rule):
    """A forbidden import in a covered module is reported with its file, line and name."""
    # Given a module the rule covers, with a forbidden import on its last line
    relative, source = BAD[rule.name]
    path = PACKAGE / relative
    assert path in files_of(rule)
    # When the rule reads it
    found = violations(rule, path, source)
    # Then that import is reported, where it is
    line = source.rstrip("\n").count("\n") + 1
    assert len(found) == 1, found
    assert found[0].startswith(f"jupyter_tfgpu/{relative}:{line}: imports ")
    assert rule.name in found[0]


def test_what_the_rules_let_through():
    """Allowed imports are not reported: the kernel side's own, the bootstrap's guarded import of
    the kernel side (and only that), the handlers' type-only import of the app."""
    bootstrap = RULES[0]
    guarded = "try:\n    from jupyter_tfgpu.in_kernel.magic import load\nexcept Exception:\n    load = None\n"
    assert violations(bootstrap, PACKAGE / "in_kernel" / "bootstrap" / "tfgpu_magic.py", guarded) == []
    server = guarded.replace("jupyter_tfgpu.in_kernel.magic", "jupyter_tfgpu.server.app")
    assert (
        len(violations(bootstrap, PACKAGE / "in_kernel" / "bootstrap" / "tfgpu_magic.py", server)) == 1
    )
    kernel = next(r for r in RULES if r.name == "kernel side imports nothing of the server side")
    ok = "from jupyter_tfgpu import protocol\nfrom jupyter_tfgpu.in_kernel.units import parse_mib\nfrom . import views\n"
    assert violations(kernel, PACKAGE / "in_kernel" / "magic.py", ok) == []
    api = next(r for r in RULES if r.name == "API handlers do not import the app")
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from jupyter_tfgpu.server.app import TFGPUApp\n"
    assert violations(api, PACKAGE / "server" / "api" / "handlers.py", typed) == []


# -- import circles --------------------------------------------------------------------------------


def importable_name(path: Path) -> str:
    """The name a module is imported by: ``jupyter_tfgpu.in_kernel.client``, or a bootstrap
    module's file name (``tfgpu_apply``)."""
    return path.stem if path.parent == BOOTSTRAP else module_name(path)


def import_graph(sources: dict[Path, str] | None = None) -> dict[str, set[str]]:
    """Each module of the package (the bootstrap's included) -> the package's modules it imports.

    ``sources`` replaces the text of some files. Imports count at any depth, type-only ones
    excepted. An import names the module it loads (``from a.b import c``: ``a.b.c`` when that is
    a module, else ``a.b``), not the packages above it.
    """
    texts = {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}
    texts.update(sources or {})
    known = {importable_name(path) for path in texts}
    graph: dict[str, set[str]] = {}
    for path, text in texts.items():
        name = importable_name(path)
        graph[name] = set()
        for imported in imports_of(text, module_name(path), path.name == "__init__.py"):
            target = imported.name
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not imported.type_only:
                graph[name].add(target)
    return graph


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph``, or None: its modules, each importing the next, the first again
    last."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        # graphlib lists each module before the one that depends on it, i.e. imports it
        return list(reversed(err.args[1]))
    return None


def test_no_module_imports_itself_through_others():
    """No import circle in the package or the bootstrap; an import inside a function counts (it
    hides a circle from Python's start-up, it does not remove it)."""
    # Given every module's imports
    graph = import_graph()
    assert {"tfgpu_bootstrap", "jupyter_tfgpu.server.app", "jupyter_tfgpu.widgets"} <= set(graph)
    # When they are followed from module to module
    circle = import_circle(graph)
    # Then none leads back to where it started
    assert circle is None, "import circle: " + " -> ".join(circle or ())


def test_an_import_circle_is_found():
    """One more import that closes a circle (the bootstrap's record importing the hook module,
    which loads the record through tfgpu_apply) is reported, with the modules on it."""
    # Given the record module importing the hook module inside a function
    record = BOOTSTRAP / "tfgpu_record.py"
    source = record.read_text() + "\n\ndef _hook():\n    import tfgpu_bootstrap\n"
    # When the imports are followed
    circle = import_circle(import_graph({record: source}))
    # Then the circle through the three modules is reported
    assert circle is not None
    assert {"tfgpu_bootstrap", "tfgpu_apply", "tfgpu_record"} <= set(circle)
    assert circle[0] == circle[-1]

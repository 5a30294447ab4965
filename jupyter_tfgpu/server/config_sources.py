"""Where each TFGPU setting comes from: every config section that reaches it, the command line last.

traitlets hands a configurable made with a parent the values of every section named after a
class of its own (``TFGPU``, ``Configurable``) at the top, and nested under every section that
reaches the parent (``ServerApp.TFGPU``, ``JupyterApp.TFGPU``, ...), the nested ones last and
winning. A file the user can write could then beat the admin's command line by using a nested
name. So the settings are read here from all of those sections, in traitlets' order, and then
the command line's values are laid over them, under whichever of those names they were given:
the command line always wins. The settings object is built from this one set only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets.config import Config
from traitlets.config.loader import LazyConfigValue

from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import SECTION, Problem, last_if_single

Path = tuple[str, ...]

# Sections named like TFGPU that something else reads, and the keys it reads there: the
# extension application (TFGPUApp) takes the settings every ExtensionApp takes.
READ_ELSEWHERE = {"TFGPUApp": frozenset(ExtensionApp.class_traits(config=True))}


@dataclass(frozen=True)
class GivenSettings:
    """The TFGPU settings as given, one value each (the one that wins), and where each came from."""

    config: Config  # one TFGPU section, the values as given (command-line text not yet parsed)
    origins: dict[str, str]  # setting -> the section and name it was given under
    command_line: frozenset[str]  # the settings whose value came from the command line

    def origin(self, name: str) -> str | None:
        """Where ``name`` was given when not under TFGPU itself: ``ServerApp.TFGPU.x on the
        command line``, ``ServerApp.TFGPU.x`` (a file); None for ``TFGPU.x``."""
        where = self.origins.get(name)
        if where is None or where == f"{SECTION}.{name}":
            return None
        return f"{where} on the command line" if name in self.command_line else where


def reaching_sections(parent: Any = None) -> list[Path]:
    """The sections whose values a TFGPU made with ``parent`` reads, lowest priority first."""
    own = TFGPU.section_names()
    above = _sections_of(parent) if parent is not None else []
    # traitlets' Configurable._find_my_config: the top-level sections, then those the parent's
    # own merged config holds, each in section-name order.
    return [(name,) for name in own] + [path + (name,) for name in own for path in above]


def _sections_of(configurable: Any) -> list[Path]:
    names = type(configurable).section_names()
    parent = getattr(configurable, "parent", None)
    above = _sections_of(parent) if parent is not None else []
    return [(name,) for name in names] + [path + (name,) for name in names for path in above]


def given_settings(app: Any) -> GivenSettings:
    """The TFGPU settings of ``app`` (a ServerApp): its files in traitlets' order, then its command line."""
    sections = reaching_sections(app)
    merged = Config({SECTION: Config()})
    origins: dict[str, str] = {}
    from_command_line: set[str] = set()
    cli_config = getattr(app, "cli_config", None) or Config()
    for config, is_command_line in ((app.config, False), (cli_config, True)):
        for path in sections:
            values = _section(config, path)
            for name, value in (values or {}).items():
                if isinstance(value, Config) or (path[-1] != SECTION and name not in TFGPU.class_traits(config=True)):
                    continue  # a subsection, or another configurable's setting in `Configurable`
                merged.merge(Config({SECTION: {name: last_if_single(name, value)}}))
                origins[name] = ".".join((*path, name))
                if is_command_line:
                    from_command_line.add(name)
                else:
                    from_command_line.discard(name)
    return GivenSettings(merged, origins, frozenset(from_command_line))


def _section(config: Config, path: Path) -> Config | None:
    node: Any = config
    for name in path:
        if not isinstance(node, Config) or not node._has_section(name):
            return None
        node = node[name]
    return node


def misplaced_settings(config: Config, reaching: Iterable[Path]) -> list[Problem]:
    """Settings under a section named like TFGPU (any case, any depth) that TFGPU never reads."""
    reaching = set(reaching)
    problems: list[Problem] = []

    def walk(node: Mapping[str, Any], path: Path) -> None:
        for key, value in node.items():
            here = (*path, key)
            looks_like_tfgpu = SECTION.lower() in key.lower() and isinstance(value, (dict, LazyConfigValue))
            if looks_like_tfgpu and here not in reaching:
                problems.extend(_unread(here, value))
            elif isinstance(value, Config):
                walk(value, here)

    walk(config, ())
    return problems


def _unread(path: Path, section: Any) -> list[Problem]:
    """One problem per setting in a section TFGPU does not read (a Python file's ``c.tfgpu.x``
    is dropped by traitlets before anyone sees it: the section alone is the problem)."""
    if isinstance(section, LazyConfigValue):
        return [Problem(".".join(path), _put_it_under_tfgpu(None))]
    read_there = READ_ELSEWHERE.get(path[-1], frozenset())
    return [
        Problem(".".join((*path, name)), _put_it_under_tfgpu(name))
        for name in section
        if name not in read_there
    ]


def _put_it_under_tfgpu(name: str | None) -> str:
    known = TFGPU.class_traits(config=True)
    if name in known:
        return f"not read: TFGPU settings go under TFGPU (c.TFGPU.{name} = ..., or --TFGPU.{name}=...)"
    close = difflib.get_close_matches(name, known, n=1) if name else []
    hint = f"; did you mean c.TFGPU.{close[0]}?" if close else ""
    return f"not read: TFGPU settings go under TFGPU (c.TFGPU.<name>){hint}"

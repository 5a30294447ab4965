"""MkDocs hooks: screenshots when they exist, and links to repository files outside the site.

The generated tables (settings, REST API, policy and event fields) are written into the pages
themselves by ``docs/_tools/generate.py``; the build takes the pages as they are.

A page asks for a screenshot with a marker comment on a line of its own:
``<!-- tfgpu:image FILE "alt text" -->`` shows ``docs/images/FILE`` if it is there; otherwise a
note, so the site builds before the screenshots exist. An unknown marker fails the build.

A link from a page to a file of the repository outside ``docs/`` (``../benchmarks/README.md``)
cannot be served by the site: it becomes a link into the repository when ``repo_url`` is set,
else the file's path in the repository. A link to a file that does not exist is left alone, so
the strict build still fails on it.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

TOOLS = Path(__file__).resolve().parent
DOCS = TOOLS.parent
ROOT = DOCS.parent

MARKER = re.compile(r"^<!-- tfgpu:(?P<name>[a-z-]+)(?P<args>[^>]*?)\s*-->$", re.MULTILINE)
# Markdown links and images whose target is a relative path (not a URL, not an anchor).
LINK = re.compile(
    r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>(?![a-z][a-z0-9+.-]*:|#|/)[^)\s]+)\)"
)


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


GENERATED = {"image": image}


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
    """MkDocs hook: screenshots in, links out of the site rewritten."""
    path = page.file.src_uri
    markdown = expand_markers(markdown, path)
    return outside_links(markdown, path, config.get("repo_url"))

"""Check every internal link of the built site, offline: the file exists and so does the anchor.

    python docs/_tools/check_links.py build/site

Reads each HTML page, collects its element ids, then follows every relative ``href`` and
``src`` (pages, images, downloads, the theme's assets) and every ``#anchor``. Links to other
sites are listed but not fetched (the build runs offline). Exits 1 with one line per broken link.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    """The ids and the links of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if values.get(key):
                self.ids.add(values[key])
        for key in ("href", "src"):
            if values.get(key) and not (
                tag == "link" and values.get("rel") in ("canonical", "alternate")
            ):
                self.links.append(values[key])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(errors="replace"))
    return page


def check(site: Path) -> tuple[list[str], int, set[str]]:
    """Broken links (as messages), how many internal links were checked, and the external URLs."""
    site = site.resolve()
    pages = {path: _parse(path) for path in site.rglob("*.html")}
    broken: list[str] = []
    external: set[str] = set()
    checked = 0
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                if parts.scheme in ("http", "https"):
                    external.add(link)
                continue
            checked += 1
            if not parts.path:
                target = path
            elif parts.path.startswith("/"):  # root-relative (the 404 page's links)
                target = site / unquote(parts.path).lstrip("/")
            else:
                target = path.parent / unquote(parts.path)
            if target.is_dir():
                target = target / "index.html"
            target = target.resolve()
            where = path.relative_to(site)
            if not target.exists() or site not in (target, *target.parents):
                broken.append(f"{where}: {link}: no such file in the site")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: {link}: no element with id {parts.fragment!r}")
    return broken, checked, external


def main(argv: list[str]) -> int:
    """Check the site folder given on the command line."""
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    broken, checked, external = check(Path(argv[1]))
    for line in broken:
        print(line, file=sys.stderr)
    print(
        f"links: {checked} internal checked, {len(broken)} broken; "
        f"{len(external)} external not fetched (offline)"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

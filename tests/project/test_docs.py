"""The documentation site builds offline with warnings as errors, and its examples are valid configs.

The build runs ``scripts/build-docs.sh`` (``mkdocs build --strict``, then every internal link of
the built site checked). It needs the docs extra (``pip install -e ".[docs]"``): without it the
build tests are skipped on a developer's machine and fail in CI (where ``CI`` is set).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from jupyter_server.serverapp import ServerApp
from traitlets.config import Application, Config

from jupyter_tfgpu.server.config import TFGPU

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
SCREENSHOTS = ("panel-light.png", "panel-dark.png")

pytestmark = pytest.mark.timeout(300)


def _tool(name: str):
    """A module of docs/_tools (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, DOCS / "_tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _tool("generate")
openapi_md = _tool("openapi_md")


# -- the generated tables are written into the pages -------------------------------------------


def test_the_generated_tables_in_the_pages_are_current():
    """Run `python docs/_tools/generate.py` when a trait, the spec or a schema changes."""
    # Given the pages that hold generated tables
    pages = {page.relative_to(DOCS).as_posix() for page in generate.pages()}
    assert {
        "admin/settings.md",
        "reference/rest-api.md",
        "user-guide.md",
        "admin/monitoring.md",
    } <= pages
    # Then each holds exactly what the sources make now
    assert generate.stale_pages() == []


def test_a_table_edited_by_hand_is_made_anew():
    """The check is real: a table that differs from its source is found and rewritten."""
    # Given the settings page with one row of its table edited by hand
    page = (DOCS / "admin" / "settings.md").read_text()
    edited = page.replace("| `TFGPU.backend` |", "| `TFGPU.backend_typo` |", 1)
    assert edited != page
    # When it is regenerated
    # Then the table is the generated one again
    assert generate.regenerate(edited) == page


def test_the_pages_hold_their_tables_in_the_repository():
    """A reader of the Markdown files (on the code host) sees the settings and the REST reference."""
    settings = (DOCS / "admin" / "settings.md").read_text()
    for name in TFGPU.class_traits(config=True):
        assert f"| `TFGPU.{name}` |" in settings, name
    api = (DOCS / "reference" / "rest-api.md").read_text()
    spec = yaml.safe_load((ROOT / "jupyter_tfgpu" / "server" / "api" / "openapi.yaml").read_text())
    for path in spec["paths"]:
        assert f"`{path}`" in api, path


def test_the_pages_show_the_example_configs_as_they_are():
    """A reader of the repository sees each example config in its page, never an include line,
    and the copy is the file the docs-run test runs."""
    # Given every page of the docs
    pages = {page.relative_to(DOCS).as_posix(): page.read_text() for page in DOCS.rglob("*.md")}
    # Then no page relies on the site's build to show a file
    assert [name for name, text in pages.items() if "--8<--" in text] == []
    # And each example a page shows is the example file, whole
    shown = set()
    for name, text in pages.items():
        for match in generate.BLOCK.finditer(text):
            if match["name"] == "example":
                shown.add(match["argument"])
                body = (EXAMPLES / match["argument"]).read_text().rstrip()
                assert body in match["body"], (name, match["argument"])
    # And every example file is shown (the docs-run test runs the copies in the pages)
    assert shown == {path.name for path in EXAMPLES.iterdir()}


def test_the_403_caps_are_every_cap_the_code_refuses_by():
    """The REST reference lists each cap a policy write can be refused by, found in the code."""
    # Given the caps the server raises CapExceeded with
    caps = generate.admin_caps()
    assert {"forced_policy", "max_threads", "max_memory_mb", "allowed_devices"} <= set(caps)
    assert set(caps) <= set(TFGPU.class_traits(config=True))
    # Then the REST reference names each of them
    api = (DOCS / "reference" / "rest-api.md").read_text()
    listed = re.findall(r"^- `TFGPU\.(\w+)`", api, re.MULTILINE)
    assert sorted(listed) == sorted(caps)


@pytest.fixture(scope="module")
def docs_tools() -> None:
    """MkDocs and its theme, or a skip (a failure in CI) saying how to get them."""
    for module in ("mkdocs", "material", "pymdownx"):
        try:
            importlib.import_module(module)
        except ImportError:
            message = f"{module} is not installed: pip install -e '.[docs]'"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """Run the docs build of the tree at ``root`` into ``site``."""
    return subprocess.run(
        ["bash", str(root / "scripts" / "build-docs.sh"), str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="module")
def site(docs_tools, tmp_path_factory) -> Path:
    """The site built from this repository."""
    out = tmp_path_factory.mktemp("docs") / "site"
    result = build(ROOT, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's text, without tags."""
    return re.sub(r"<[^>]+>", " ", (site / page).read_text())


def test_the_settings_page_has_every_setting_with_its_help(site):
    """Every TFGPU trait is in the admin settings reference, with the first words of its help."""
    text = page_text(site, "admin/settings.html")
    for name, trait in TFGPU.class_traits(config=True).items():
        assert f"TFGPU.{name}" in text, name
        first_words = " ".join(trait.help.split()[:4])
        assert first_words.replace("'", "&#39;") in text or first_words in text, name


def test_the_api_page_has_every_operation_and_schema(site):
    """Every path, method and schema of the OpenAPI spec is in the REST API reference."""
    spec = yaml.safe_load((ROOT / "jupyter_tfgpu" / "server" / "api" / "openapi.yaml").read_text())
    html = (site / "reference" / "rest-api.html").read_text()
    for path, item in spec["paths"].items():
        for method in ("get", "put", "post", "patch", "delete"):
            if method in item:
                anchor = openapi_md.operation_anchor(method, path)
                assert f'id="{anchor}"' in html, (method, path)
                assert f'href="#{anchor}"' in html, (method, path)
    for name in spec["components"]["schemas"]:
        assert f'id="{openapi_md.schema_anchor(name)}"' in html, name


def test_the_user_guide_lists_every_policy_field(site):
    """The policy fields table is generated from the policy schema."""
    schema = json.loads((ROOT / "jupyter_tfgpu" / "policy" / "policy.schema.json").read_text())
    text = page_text(site, "user-guide.html")
    for field in schema["properties"]:
        assert field in text, field
    assert "--limit" in text and "--growth" in text


def test_screenshots_are_shown_when_they_exist(site):
    """The user guide shows the panel screenshots that docs/images/ holds, and says which it lacks."""
    html = (site / "user-guide.html").read_text()
    for name in SCREENSHOTS:
        if (DOCS / "images" / name).exists():
            assert f'src="images/{name}"' in html
            assert (site / "images" / name).exists()
        else:
            assert f"docs/images/{name}" in html


def test_examples_are_served_with_the_site(site):
    """The example configs the pages link to are in the site."""
    for example in EXAMPLES.iterdir():
        assert (site / "examples" / example.name).read_bytes() == example.read_bytes()


def _tree_copy(tmp_path: Path) -> Path:
    """A copy of the docs and their build inputs, to break on purpose."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(DOCS, root / "docs")
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    for entry in ROOT.iterdir():  # the rest of the repository, which the pages may link to
        if entry.name not in ("docs", "mkdocs.yml", "build", ".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    return root


@pytest.mark.parametrize(
    "broken, said",
    [
        ("[a page that is not there](nowhere.md)", "nowhere.md"),
        ("[a section that is not there](admin/index.md#no-such-section)", "no-such-section"),
        ("![a picture that is not there](images/nothing.png)", "nothing.png"),
    ],
)
def test_a_broken_internal_link_fails_the_build(docs_tools, tmp_path, broken, said):
    """Strict mode and the link check turn a broken link or anchor into a failed build."""
    # Given a page with a broken link
    root = _tree_copy(tmp_path)
    with (root / "docs" / "limits.md").open("a") as page:
        page.write(f"\n{broken}\n")
    # When the docs are built
    result = build(root, tmp_path / "site")
    # Then the build fails and names it
    assert result.returncode != 0
    assert said in result.stdout + result.stderr


def test_the_build_passes_without_the_screenshots(docs_tools, tmp_path):
    """Before the screenshots exist the site still builds, with a note where each goes."""
    root = _tree_copy(tmp_path)
    shutil.rmtree(root / "docs" / "images", ignore_errors=True)
    result = build(root, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    html = (tmp_path / "site" / "user-guide.html").read_text()
    assert "Screenshot not in this build" in html
    assert "docs/images/panel-light.png" in html and "docs/images/panel-dark.png" in html


# -- the example configs are configs the code accepts ------------------------------------------


def python_config(path: Path) -> Config:
    """A Python config file loaded as Jupyter loads it."""
    config = Config()
    exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: config, "c": config})  # noqa: S102
    return config


class _Server(Application):
    """Parses a server command line the way jupyter_server does, for TFGPU and ServerApp."""

    classes: ClassVar[list[type]] = [TFGPU]


def check_command_line(args: list[str]) -> TFGPU:
    """Every ``--TFGPU.*`` argument is a valid setting and each ``--ServerApp.*`` a known one."""
    server_traits = ServerApp.class_traits(config=True)
    for arg in args:
        match = re.fullmatch(r"--(\w+)\.(\w+)=.*", arg)
        assert match, arg
        if match[1] == "ServerApp":
            assert match[2] in server_traits, arg
        else:
            assert match[1] == "TFGPU", arg
    app = _Server()
    app.parse_command_line([a for a in args if a.startswith("--TFGPU.")])
    return TFGPU(config=app.config)


def _known(config: Config) -> dict[str, Any]:
    known = TFGPU.class_traits(config=True)
    unknown = set(config.TFGPU) - set(known)
    assert not unknown, f"not TFGPU settings: {unknown}"
    return dict(config.TFGPU)


def test_the_team_server_example_is_a_valid_config():
    """Every setting in the team server example exists and takes its value."""
    config = python_config(EXAMPLES / "team_server_config.py")
    settings = _known(config)
    tfgpu = TFGPU(config=config)
    for name, value in settings.items():
        assert getattr(tfgpu, name) == value


def test_the_jupyterhub_example_pins_the_caps_on_the_command_line():
    """The hub example's Spawner.args parse as server arguments and pin the caps."""
    args = list(python_config(EXAMPLES / "jupyterhub_config.py").Spawner.args)
    tfgpu = check_command_line(args)
    assert tfgpu.max_memory_mb and tfgpu.force_memory_growth and tfgpu.enforcement != "off"
    assert "--ServerApp.jpserver_extensions=jupyter_tfgpu=True" in args


def test_the_kubernetes_values_ask_for_gpus_and_mig_and_pin_the_caps():
    """The zero-to-jupyterhub values: GPU and MIG profiles, caps, Prometheus without a token."""
    values = yaml.safe_load((EXAMPLES / "z2jh-values.yaml").read_text())
    limits = [
        profile.get("kubespawner_override", {}).get("extra_resource_limits", {})
        for profile in values["singleuser"]["profileList"]
    ]
    assert {"nvidia.com/gpu": "1"} in limits
    assert {"nvidia.com/mig-1g.10gb": "1"} in limits
    args = values["hub"]["config"]["KubeSpawner"]["args"]
    tfgpu = check_command_line(args)
    assert tfgpu.max_memory_mb and tfgpu.force_memory_growth
    assert "--ServerApp.authenticate_prometheus=False" in args
    ports = [
        p["port"]
        for rule in values["singleuser"]["networkPolicy"]["ingress"]
        for p in rule["ports"]
    ]
    assert 8888 in ports


def test_the_prometheus_example_scrapes_each_users_metrics():
    """The scrape config keeps user servers and points at /user/<name>/metrics on port 8888."""
    config = yaml.safe_load((EXAMPLES / "prometheus-scrape.yaml").read_text())
    relabel = config["scrape_configs"][0]["relabel_configs"]
    assert {"target_label": "__metrics_path__", "replacement": "/user/$1/metrics"}.items() <= {
        k: v
        for rule in relabel
        for k, v in rule.items()
        if rule.get("target_label") == "__metrics_path__"
    }.items()
    assert any(rule.get("replacement") == "$1:8888" for rule in relabel)

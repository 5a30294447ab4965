"""Every example in the docs runs, or is checked offline, exactly as written.

What is taken from ``README.md`` and ``docs/**/*.md`` (the example files of ``docs/examples/`` are
written into their pages by ``docs/_tools/generate.py``, and read there):

- ```` ```python ```` blocks that configure (``c.…`` or ``get_config()``) are loaded by Jupyter's
  own config loader, then handed to ``TFGPU`` (and to the other configurables they set), so a
  bad value fails as it would in the server; other Python blocks run in a fresh interpreter;
- ```` ```json ```` blocks through ``JSONFileConfigLoader`` (a caps file, an object of setting
  names, through the server's caps-file reader), ```` ```yaml ```` blocks parsed, with
  their ``extraConfig`` Python and their ``--Class.trait=value`` argument lists checked as above;
- shell commands (```` ```bash ````, unlabelled blocks, a systemd unit's ``ExecStart``, and code
  spans in the text that start with a command such as ``python`` or ``jupyter``): each kind is
  run, or checked for what can be checked offline (see ``check_command``). A command that is
  only shown is in ``SHOWN_ONLY`` with the reason; any other command fails until someone decides;
- ``%tfgpu`` lines through the magic's own parser, and code spans ``c.X.y = v`` and
  ``--TFGPU.x=v`` loaded as config;
- the examples in the README settings table's help texts (``e.g. {…}``, ``Example: […]``).

A block meant to fail (one that shows an error) is marked on the line before it with
``<!-- docs-test: skip (the reason) -->``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from jupyter_server.serverapp import ServerApp
from traitlets.config import Config
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from jupyter_tfgpu.server.config import TFGPU

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
BIN = Path(sys.executable).parent

# Commands that are shown and cannot be run or checked in a unit test, each with the reason.
SHOWN_ONLY = {
    "repo2docker .": "builds a Docker image of the repository; needs Docker",
    "nvidia-smi -L": "lists the machine's NVIDIA GPUs; needs a GPU and its driver",
    "nvidia-smi -i '<gpu>' -c EXCLUSIVE_PROCESS": "sets a GPU's compute mode; needs root and a GPU",
    "python -c pass": "benchmarks: the interpreter start-up being measured, not an instruction",
    'python -c "import tensorflow"': "benchmarks: the import time being measured",
    "python -X importtime": "benchmarks: names the interpreter option used for the measurement",
    "pip install": "benchmarks: names the install step in a sentence, with no package",
    "pip install --no-index --no-deps --target": "GPU validation: a fragment of the wheel install "
    "that scripts/gpu-wheels.sh runs in full",
    "systemctl restart jupyter-team": "restarts the team server's systemd unit; needs systemd",
    "systemctl enable --now jupyter-team": "starts the team server's unit; needs systemd",
    "useradd --system --create-home --home-dir /srv/jupyter jupyter": "makes the team server's "
    "user; needs root",
    "jupyter server password": "asks for a password at the terminal (jupyter_server's own)",
}
# Code spans that are templates for a setting rather than examples of one.
TEMPLATES = {
    "c.TFGPU.NAME = VALUE": "the form of every setting in a config file",
    "--TFGPU.NAME=VALUE": "the form of every setting on the command line",
}
# A code span in the text is a command when it starts with one of these.
COMMAND_WORDS = {
    "bash", "curl", "docker", "helm", "jupyter", "kubectl", "mkdocs", "nvidia-smi", "pip",
    "python", "python3", "repo2docker", "sh", "sudo", "systemctl", "uv",
}  # fmt: skip
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


# -- what the docs hold ------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int
    lang: str
    text: str
    skip: str | None = None

    @property
    def where(self) -> str:
        """``docs/admin/index.md:23``."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _dedent(body: str, indent: str) -> str:
    return "".join(
        line[len(indent) :] if line.startswith(indent) else line for line in body.splitlines(True)
    )


def blocks() -> list[Block]:
    """Every fenced block of every page."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = SKIP.search(before)
            body = _dedent(match["body"], match["indent"])
            found.append(
                Block(
                    page,
                    text.count("\n", 0, match.start()) + 1,
                    match["lang"].strip().split(" ")[0].lower(),
                    body,
                    skip["reason"] if skip else None,
                )
            )
    return found


def code_spans() -> list[tuple[str, str]]:
    """``(where, text)`` of every code span in the pages' text, outside the fenced blocks."""
    spans = []
    for page in PAGES:
        text = FENCE.sub(lambda m: "\n" * m[0].count("\n"), page.read_text())
        for match in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", text):
            spans.append(
                (f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}", match[1])
            )
    return spans


def shell_lines(text: str) -> list[str]:
    """Command lines of a shell block: continuations joined, blank lines dropped."""
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def split_commands(line: str) -> list[list[str]]:
    """One line's commands (``a && b``), as words, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [words for words in commands if words]


def _params(items) -> list:
    return [
        pytest.param(
            item, id=item.where, marks=pytest.mark.skip(reason=item.skip) if item.skip else ()
        )
        for item in items
    ]


ALL_BLOCKS = blocks()


# -- how each kind is checked ------------------------------------------------------------------


def load_python_config(code: str, folder: Path) -> Config:
    """Load a config file's text as Jupyter does (``c`` and ``get_config`` provided)."""
    path = folder / "jupyter_server_config.py"
    path.write_text(code)
    return PyFileConfigLoader(path.name, path=str(folder)).load_config()


def load_json_config(text: str, folder: Path) -> Config:
    """Load a JSON config file's text as Jupyter does."""
    path = folder / "jupyter_server_config.json"
    path.write_text(text)
    return JSONFileConfigLoader(path.name, path=str(folder)).load_config()


def is_caps_file(text: str) -> bool:
    """A caps file (``TFGPU.caps_file``) rather than a config file: an object of setting names,
    where a config file names sections (``TFGPU``, ``ServerApp``), which start upper case."""
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and not any(key[:1].isupper() for key in data)


def check_caps_file(text: str, folder: Path) -> None:
    """The server's caps-file reader takes it, as root-owned /etc/jupyter would hold it."""
    from jupyter_tfgpu.server.caps_file import read_caps_file

    admin = folder / "etc"
    admin.mkdir(mode=0o755)
    path = admin / "tfgpu-caps.json"
    path.write_text(text)
    path.chmod(0o644)
    # As a server under another user than the one that wrote the file (root's own file, for a
    # server running as root).
    read = read_caps_file(str(path), uid=0 if os.geteuid() == 0 else os.geteuid() + 1)
    assert read.values is not None, [str(problem) for problem in read.problems]


def caps_files_named() -> set[str]:
    """The caps files the example configs name."""
    named = set()
    for example in EXAMPLES.glob("*.py"):
        found = re.search(r"caps_file = \"([^\"]+)\"", example.read_text())
        if found:
            named.add(found[1])
    return named


def parse_server_command_line(args: list[str]) -> Config:
    """Parse a server's arguments with jupyter_server's own command-line parser; TFGPU checks its."""
    app = ServerApp()
    app.parse_command_line(args)
    check_config(app.config)
    return app.config


def check_config(config: Config) -> None:
    """Hand every section to the configurable it is for, so a bad name or value fails."""
    for section in config:
        values = config[section]
        if section == "TFGPU":
            unknown = set(values) - set(TFGPU.class_traits(config=True))
            assert not unknown, f"not TFGPU settings: {sorted(unknown)}"
            TFGPU(config=config)
        elif section in ("ServerApp", "ExtensionApp"):
            unknown = set(values) - set(ServerApp.class_traits(config=True))
            assert not unknown, f"not ServerApp settings: {sorted(unknown)}"
            ServerApp(config=Config({section: values}))
        elif section == "EventLogger":
            check_event_logger(config)
        elif section.endswith("Spawner"):
            from jupyterhub.spawner import Spawner

            unknown = set(values) - set(Spawner.class_traits(config=True))
            assert not unknown, f"not Spawner settings: {sorted(unknown)}"
            if "args" in values:
                parse_server_command_line(list(values["args"]))
        else:
            raise AssertionError(f"a config section the docs test does not know: {section}")


def check_event_logger(config: Config) -> None:
    """The event logger takes the handlers; an enforcement event reaches each log file whose
    folder exists, and the package's enforcement log keeps the bus's other events out."""
    from jupyter_events import EventLogger

    from jupyter_tfgpu.server.events import ENFORCEMENT_EVENT, ENFORCEMENT_SCHEMA, EnforcementLog

    other = {"$id": "https://example.org/other/v1", "version": "1", "title": "other",
             "type": "object", "properties": {}}  # fmt: skip
    logger = EventLogger(config=config)
    for handler in list(logger.handlers or []):
        path = Path(getattr(handler, "path", getattr(handler, "baseFilename", "")))
        if path.name and not path.parent.is_dir():
            # A folder the docs tell the admin to create (/srv/...): nothing is written there.
            logger.remove_handler(handler)
            handler.close()
    try:
        logger.register_event_schema(ENFORCEMENT_SCHEMA)
        logger.register_event_schema(other)
        event = {"kernel_id": "k", "rule": "memory_cap", "action": "warn", "reason": "docs test"}
        logger.emit(schema_id=ENFORCEMENT_EVENT, data=event)
        logger.emit(schema_id=other["$id"], data={})
        for handler in logger.handlers or []:
            handler.flush()
            path = Path(getattr(handler, "path", getattr(handler, "baseFilename", "")))
            if not path.name:
                continue  # not a file
            lines = path.read_text().splitlines()
            assert json.loads(lines[-1])["reason"] == "docs test"
            if isinstance(handler, EnforcementLog):
                assert all(json.loads(line)["__schema__"] == ENFORCEMENT_EVENT for line in lines)
    finally:
        for handler in logger.handlers or []:
            handler.close()


def is_config(code: str) -> bool:
    """Python that configures Jupyter, rather than code for a notebook."""
    return bool(re.search(r"^\s*c\s*=\s*get_config\(\)|^\s*c\.\w+", code, re.MULTILINE))


def check_python(code: str, folder: Path) -> None:
    """A config block through the config loader; notebook code in a fresh interpreter."""
    if is_config(code):
        config = load_python_config(code, folder)
        assert config, "the config file set nothing (the loader skips a file that fails)"
        check_config(config)
    else:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr


def check_yaml(text: str, folder: Path) -> None:
    """Parse; load the Python it embeds, and parse the server arguments it lists."""

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "extraConfig" and isinstance(value, dict):
                    for code in value.values():
                        check_config(load_python_config(code, folder))
                else:
                    walk(value, str(name))
        elif isinstance(node, list):
            if (
                node
                and all(isinstance(i, str) for i in node)
                and any(i.startswith("--") for i in node)
            ):
                parse_server_command_line(node)
            else:
                for item in node:
                    walk(item, key)

    documents = list(yaml.safe_load_all(text))
    assert documents and any(documents)
    for document in documents:
        walk(document)


def check_magic(line: str) -> None:
    """A ``%tfgpu`` line parses with the magic's parser, and each field's value with its field."""
    from jupyter_tfgpu.in_kernel.magic import TFGPUMagics
    from jupyter_tfgpu.in_kernel.policy_fields import field_named, policy_fields

    args = TFGPUMagics.tfgpu.parser.parse_argstring(line.removeprefix("%tfgpu"))
    for field in policy_fields():
        value = getattr(args, field.name, None)
        if isinstance(value, str):
            field.parse(value)
    for name in (args.unset or "").split(","):
        if name:
            field_named(name)


def magic_command(line: str) -> str:
    """The ``%tfgpu …`` part of a line that may go on with a comment or a description."""
    return re.split(r"\s+#|\s{2,}", line.strip(), maxsplit=1)[0]


def check_pip_install(args: list[str]) -> None:
    """What is installed is this project (a checkout, its name, or the wheel scripts/release.sh
    makes, of this version) with extras it has; a wheelhouse folder is one release.sh makes."""
    metadata = importlib.metadata.metadata("jupyter-tfgpu")  # made from pyproject.toml
    name = re.sub(r"[-_.]+", "-", metadata["Name"].lower())
    extras = set(metadata.get_all("Provides-Extra") or [])
    targets, options = [], []
    words = iter(args)
    for word in words:
        if word in ("--find-links", "-f"):
            folder = next(words)
            assert folder in ("dist/wheelhouse", "wheelhouse"), f"not a release's wheelhouse: {folder}"
            assert "wheelhouse" in (ROOT / "scripts" / "release.sh").read_text()
        elif word.startswith("-"):
            options.append(word)
        else:
            targets.append(word)
    allowed = {"-e", "--editable", "--no-cache-dir", "-U", "--upgrade", "--no-index"}
    assert set(options) <= allowed, options
    assert targets, "pip install with nothing to install"
    for target in targets:
        wheel = re.fullmatch(
            r"(?:[\w./-]*/)?(?P<name>jupyter_tfgpu)-(?P<version>[^-]+)-py3-none-any\.whl"
            r"(?:\[(?P<extras>[^\]]*)\])?",
            target,
        )
        match = wheel or re.fullmatch(
            r"(?P<name>\.|[A-Za-z0-9_.-]+)(?:\[(?P<extras>[^\]]*)\])?", target
        )
        assert match, target
        if wheel:
            assert wheel["version"] == metadata["Version"], f"{target}: not this version"
        elif match["name"] == ".":
            assert (ROOT / "pyproject.toml").exists()
        else:
            assert re.sub(r"[-_.]+", "-", match["name"].lower()) == name, target
        wanted = {e.strip() for e in (match["extras"] or "").split(",") if e.strip()}
        assert wanted <= extras, f"no such extras: {sorted(wanted - extras)}"


def check_install_folders(args: list[str]) -> None:
    """``install -d -o USER -g GROUP -m MODE FOLDER...`` makes the folder an example config keeps
    its policies in (policy_store_path), for the user of the page's systemd unit."""
    options, folders = {}, []
    words = iter(args)
    for word in words:
        if word in ("-o", "-g", "-m"):
            options[word] = next(words)
        else:
            folders.append(word)
    assert set(options) == {"-o", "-g", "-m"} and int(options["-m"], 8) & 0o700 == 0o700, options
    units = "\n".join(b.text for b in ALL_BLOCKS if b.lang == "ini")
    assert f"User={options['-o']}" in units, f"no unit runs as {options['-o']}"
    stores = set()
    for example in EXAMPLES.glob("*.py"):
        found = re.search(r"policy_store_path = \"([^\"]+)\"", example.read_text())
        if found:
            stores.add(str(Path(found[1]).parent))
    assert stores & set(folders), f"none of {folders} is a store folder of the examples {stores}"


def check_install_caps_file(args: list[str], folder: Path) -> None:
    """``install -o USER -g GROUP -m MODE FILE DEST`` puts an example caps file where an example
    config names it, owned by another user than the server's, writable by its owner alone."""
    options, files = {}, []
    words = iter(args)
    for word in words:
        if word in ("-o", "-g", "-m"):
            options[word] = next(words)
        else:
            files.append(word)
    assert set(options) == {"-o", "-g", "-m"} and len(files) == 2, args
    assert int(options["-m"], 8) & 0o022 == 0, f"others could write it: {options['-m']}"
    units = "\n".join(b.text for b in ALL_BLOCKS if b.lang == "ini")
    assert f"User={options['-o']}" not in units, "the server's user would own the caps file"
    source, dest = files
    assert (EXAMPLES / source).is_file(), f"{source} is not an example file"
    assert dest in caps_files_named(), f"{dest} is not a caps file an example config names"
    check_caps_file((EXAMPLES / source).read_text(), folder)


def check_script(path: str, args: list[str]) -> None:
    """The script is in the repository, and every option given is one it names."""
    script = ROOT / path
    assert script.is_file(), f"{path} is not in the repository"
    source = script.read_text()
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in source, f"{path} has no option {arg}"


def check_curl(args: list[str]) -> None:
    """The method and path are in the OpenAPI spec, and a JSON body is valid for it."""
    spec = yaml.safe_load((ROOT / "jupyter_tfgpu" / "server" / "api" / "openapi.yaml").read_text())
    method, body, url = None, None, None
    words = iter(args)
    for word in words:
        if word in ("-X", "--request"):
            method = next(words).lower()
        elif word in ("-d", "--data", "--data-raw"):
            body = next(words)
        elif word in ("-H", "--header"):
            next(words)
        elif not word.startswith("-"):
            url = word
    assert url and "tfgpu/api/" in url, url
    method = method or ("post" if body is not None else "get")
    path = "/" + url.split("tfgpu/api/", 1)[1].split("?")[0]
    operations = [
        item[method]
        for template, item in spec["paths"].items()
        if method in item and re.fullmatch(_path_pattern(template), path)
    ]
    assert operations, f"{method.upper()} {path} is not in the API"
    if body is not None:
        data = json.loads(body)
        schema = operations[0]["requestBody"]["content"]["application/json"]["schema"]
        if schema.get("$ref", "").endswith("/Policy"):
            from jupyter_tfgpu.policy import validate_policy

            validate_policy(data)


def _path_pattern(template: str) -> str:
    """``/policies/{path}`` as a pattern: ``{path}`` takes slashes, other parameters do not."""
    parts = re.split(r"(\{\w+\})", template)
    return "".join(
        (".+" if part == "{path}" else "[^/]+") if part.startswith("{") else re.escape(part)
        for part in parts
    )


def _run(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HOME": str(folder),
        "JUPYTER_CONFIG_DIR": str(folder / "config"),
        "JUPYTER_DATA_DIR": str(folder / "data"),
        "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
    }
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_run(words: list[str]) -> list[str]:
    """The command itself: without the variables set for it (``PYTHON=python3.12 bash ...``) and
    without ``sudo`` or ``sudo -u USER`` in front."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    if words[:1] == ["sudo"]:
        words = words[3:] if words[1:2] == ["-u"] else words[1:]
    return words


def check_command(words: list[str], folder: Path) -> None:
    """Run the command, or check offline what it relies on; an unknown kind fails."""
    words = as_run(words)
    if any(shlex.split(shown) == [Path(words[0]).name, *words[1:]] for shown in SHOWN_ONLY):
        return
    program, args = Path(words[0]).name, words[1:]
    python = program in ("python", "python3") or re.fullmatch(r"python3\.\d+", program)
    if (
        program == "jupyter"
        and args[:1] in (["lab"], ["server"])
        and all(a.startswith("-") for a in args[1:])
    ):
        parse_server_command_line(args[1:])  # starts a server: its arguments are what can fail
    elif program == "jupyter" and args in (["server", "extension", "list"], ["--paths"]):
        result = _run([str(BIN / "jupyter"), *args], folder)
        if args[0] == "server":
            said = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # colours
            assert re.search(r"jupyter_tfgpu\b.*\bOK\b", said), said
    elif python and args[:2] == ["-m", "jupyter_tfgpu"]:
        result = _run([sys.executable, *args], folder)
        if "--help-all" in args:
            for name in TFGPU.class_traits(config=True):
                assert f"--TFGPU.{name}" in result.stdout, name
    elif (python and args[:3] == ["-m", "pip", "install"]) or (
        program == "pip" and args[:1] == ["install"]
    ):
        check_pip_install(args[3:] if python else args[1:])
    elif program == "install" and args[:1] == ["-d"]:
        check_install_folders(args[1:])
    elif program == "install":
        check_install_caps_file(args, folder)
    elif python and args[:1] == ["-m"] and args[1:2] == ["venv"]:
        assert len(args) == 3 and Path(args[2]).is_absolute(), "python -m venv FOLDER"
    elif python and args[:3] == ["-m", "pip", "uninstall"]:
        names = [a for a in args[3:] if not a.startswith("-")]
        assert names == [importlib.metadata.metadata("jupyter-tfgpu")["Name"]], names
    elif python and args and args[0].endswith(".py"):
        check_script(args[0], args[1:])
    elif program in ("bash", "sh") and args and args[0].endswith(".sh"):
        check_script(args[0], [])
    elif program == "curl":
        check_curl(args)
    else:
        raise AssertionError(
            f"an unrecognised command: {shlex.join(words)!r}. Check it here, or add it to "
            "SHOWN_ONLY with the reason it is only shown."
        )


# -- the tests ---------------------------------------------------------------------------------


# promql blocks are evaluated on a real Prometheus by tests/monitoring/test_prometheus.py.
KNOWN_LANGS = {
    "python", "json", "yaml", "yml", "bash", "sh", "shell", "console", "ini", "text", "promql",
    "dockerfile", "",
}  # fmt: skip


def test_every_block_is_of_a_kind_the_test_knows():
    """A block in a new language fails here until this test learns to check it."""
    unknown = [f"{b.where} ({b.lang})" for b in ALL_BLOCKS if b.lang not in KNOWN_LANGS]
    assert not unknown


@pytest.mark.parametrize("block", _params([b for b in ALL_BLOCKS if b.lang == "python"]))
def test_python_blocks_run(block, tmp_path, monkeypatch):
    """A config block loads as Jupyter loads it and TFGPU accepts it; other code runs."""
    # Given the Jupyter folders of a throw-away user
    for name in ("DATA", "CONFIG", "RUNTIME"):
        monkeypatch.setenv(f"JUPYTER_{name}_DIR", str(tmp_path / name.lower()))
    # Then the block, exactly as written, loads and runs
    check_python(block.text, tmp_path)


@pytest.mark.parametrize("block", _params([b for b in ALL_BLOCKS if b.lang == "json"]))
def test_json_blocks_load(block, tmp_path):
    """A JSON config block loads with Jupyter's JSON config loader and its settings are valid;
    a caps file (setting names at the top, no sections) is read by the server's own reader."""
    if is_caps_file(block.text):
        check_caps_file(block.text, tmp_path)
    else:
        check_config(load_json_config(block.text, tmp_path))


@pytest.mark.parametrize("block", _params([b for b in ALL_BLOCKS if b.lang in ("yaml", "yml")]))
def test_yaml_blocks_parse_and_their_settings_load(block, tmp_path):
    """YAML parses; the Python and server arguments inside are valid config."""
    check_yaml(block.text, tmp_path)


def check_dockerfile(text: str) -> None:
    """An image recipe: what it copies in is a release wheel of this version, and each pip
    install in it installs this project as the docs say."""
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    assert lines and lines[0].startswith("FROM "), "an image recipe starts FROM an image"
    for line in lines:
        instruction, _, rest = line.partition(" ")
        if instruction == "COPY":
            for source in shlex.split(rest)[:-1]:
                check_pip_install([source])  # the wheel release.sh makes, of this version
        elif instruction == "RUN":
            for words in split_commands(rest):
                if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                    check_pip_install(words[2:] if words[0] == "pip" else words[4:])
                else:
                    assert words[0] in ("rm",), f"a RUN the test does not know: {shlex.join(words)}"


@pytest.mark.parametrize("block", _params([b for b in ALL_BLOCKS if b.lang == "dockerfile"]))
def test_image_recipes_install_the_release(block):
    """A Dockerfile in the docs installs this project's release wheel."""
    check_dockerfile(block.text)


def _commands() -> list:
    found = []
    for block in ALL_BLOCKS:
        lines: list[str] = []
        if block.lang in ("bash", "sh", "shell", "console"):
            lines = [line.removeprefix("$ ") for line in shell_lines(block.text)]
        elif block.lang == "ini":
            lines = [
                line.split("=", 1)[1]
                for line in block.text.splitlines()
                if line.startswith("ExecStart=")
            ]
        elif block.lang == "":
            lines = [line for line in shell_lines(block.text) if not line.startswith("%")]
        for line in lines:
            found += [(block.where, block.skip, words) for words in split_commands(line)]
    for where, span in code_spans():
        if span.split(" ", 1)[0] in COMMAND_WORDS:
            found += [(where, None, words) for words in split_commands(span)]
    return [
        pytest.param(
            words,
            id=f"{where}: {shlex.join(words)}",
            marks=pytest.mark.skip(reason=skip) if skip else (),
        )
        for where, skip, words in found
    ]


@pytest.mark.parametrize("words", _commands())
def test_shell_commands_run_or_check(words, tmp_path):
    """Each command is run, or checked offline for what it needs, or is shown-only by decision."""
    check_command(words, tmp_path)


def test_the_shown_only_commands_are_still_in_the_docs():
    """The allow-list holds only commands the docs show (a stale entry is removed)."""
    shown = []
    for param in _commands():
        words = as_run(param.values[0])
        shown.append([Path(words[0]).name, *words[1:]])  # /srv/.../bin/jupyter is jupyter
    stale = [command for command in SHOWN_ONLY if shlex.split(command) not in shown]
    assert not stale


def _magic_lines() -> list:
    found = [
        (b.where, b.skip, magic_command(line))
        for b in ALL_BLOCKS
        if b.lang in ("", "text")
        for line in b.text.splitlines()
        if line.startswith("%tfgpu")
    ]
    found += [(where, None, span) for where, span in code_spans() if span.startswith("%tfgpu")]
    return [
        pytest.param(
            line, id=f"{where}: {line}", marks=pytest.mark.skip(reason=skip) if skip else ()
        )
        for where, skip, line in found
    ]


@pytest.mark.parametrize("line", _magic_lines())
def test_magic_lines_parse(line):
    """Every ``%tfgpu`` line shown parses with the magic's options and values."""
    check_magic(line)


def _config_spans() -> list:
    return [
        pytest.param(span, id=f"{where}: {span}")
        for where, span in code_spans()
        if span not in TEMPLATES
        and (
            re.fullmatch(r"c\.\w+\.\w+\s*=\s*.+", span) or re.fullmatch(r"--TFGPU\.\w+[= ].+", span)
        )
    ]


@pytest.mark.parametrize("span", _config_spans())
def test_settings_in_the_text_load(span, tmp_path):
    """``c.TFGPU.max_memory_mb = 20480`` and ``--TFGPU.max_memory_mb=20480`` in the text are valid."""
    if span.startswith("--"):
        parse_server_command_line(shlex.split(span))  # as the shell hands it to the server
    else:
        config = load_python_config(span, tmp_path)
        assert config, span
        check_config(config)


def settings_table_examples() -> list[tuple[str, str]]:
    """``(setting, example)`` from the README settings table's help texts."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- config-table:begin -->", 1)[1].split("<!-- config-table:end -->", 1)[
        0
    ]
    traits = TFGPU.class_traits(config=True)
    found = []
    for row in re.finditer(r"^\| `TFGPU\.(\w+)` \| .*? \| (.*) \|$", table, re.MULTILINE):
        name, text = row[1], row[2]
        for match in re.finditer(r"(?:e\.g\.|Example:|\b(?P<other>\w+) =)\s+(?=[\[{])", text):
            setting = match["other"] or name
            if setting not in traits:
                continue
            found.append((setting, _bracketed(text, match.end())))
    return found


def _bracketed(text: str, start: int) -> str:
    """The balanced ``{…}`` or ``[…]`` that starts at ``start``."""
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(text[end], 0)
        if depth == 0:
            return text[start : end + 1]
    raise AssertionError(f"unbalanced example: {text[start:]}")


def test_the_settings_table_has_examples():
    """The examples below come from the table (so a change in how they are written is noticed)."""
    settings = {name for name, _ in settings_table_examples()}
    assert {"default_policy", "forced_policy", "simulated_gpus"} <= settings


@pytest.mark.parametrize("setting, example", settings_table_examples())
def test_the_settings_table_examples_load(setting, example, tmp_path):
    """Each example, pasted after ``c.TFGPU.<setting> =``, is a valid config file."""
    config = load_python_config(f"c.TFGPU.{setting} = {example}\n", tmp_path)
    assert config.TFGPU[setting] == ast.literal_eval(example)
    check_config(config)


# -- the checks themselves fail when they should -----------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        'c.TFGPU.default_policy = {"memory_growth": true}\n',  # JSON's true: NameError
        "c.TFGPU.max_memory_mb = -1\n",
        "c.TFGPU.max_memory_mib = 1024\n",  # no such setting
        'import logging\nc.EventLogger.handlers = [logging.FileHandler("/no/such/folder/e.jsonl")]\n',
    ],
)
def test_a_broken_config_block_fails(code, tmp_path):
    """What the loader would skip, or TFGPU refuse, fails the check."""
    with pytest.raises(Exception):  # noqa: B017 - the loader's own error, whichever it is
        check_python(code, tmp_path)


@pytest.mark.parametrize(
    "command",
    [
        "jupyter lab --TFGPU.backend=nvidia",
        "jupyter lab --TFGPU.no_such_setting=1",
        'python -m pip install ".[gpu]"',
        "bash scripts/no-such-script.sh",
        "make docs",
    ],
)
def test_a_broken_command_fails(command, tmp_path):
    """A wrong setting, a missing extra or script, or a kind of command nobody decided on."""
    with pytest.raises(Exception):  # noqa: B017
        for words in split_commands(command):
            check_command(words, tmp_path)


@pytest.mark.parametrize(
    "text",
    ['{"max_memory_mb": "20 GiB"}', '{"backend": "nvml"}', '{"max_memory": 20480}'],
)
def test_a_broken_caps_file_fails(text, tmp_path):
    """A caps file block the server would refuse fails the check."""
    assert is_caps_file(text)
    with pytest.raises(AssertionError):
        check_caps_file(text, tmp_path)


def test_json_config_is_loaded_and_checked(tmp_path):
    """A JSON config block goes through Jupyter's JSON loader and the same checks."""
    # Given a valid and a broken JSON config
    good = '{"TFGPU": {"backend": "simulated", "default_policy": {"memory_growth": true}}}'
    bad = '{"TFGPU": {"backend": "simulated",}}'
    # Then the valid one loads, with its values, and the broken one fails
    config = load_json_config(good, tmp_path)
    check_config(config)
    assert config.TFGPU.default_policy == {"memory_growth": True}
    with pytest.raises(ValueError):
        load_json_config(bad, tmp_path)


def test_a_marked_block_is_skipped(tmp_path, monkeypatch):
    """``<!-- docs-test: skip (why) -->`` before a block skips it, with the reason."""
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n<!-- docs-test: skip (shows an error) -->\n```python\nc.TFGPU.x = true\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PAGES", [page])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [(b.lang, b.skip) for b in blocks()] == [("python", "shows an error")]

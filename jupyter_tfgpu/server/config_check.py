"""Start-up checks of the admin's TFGPU settings and of the config files that carry them.

A setting that does not apply must never leave a server running kernels without the admin's
caps unnoticed. jupyter_server only logs a config file that raises, or an extension that fails
to load, and carries on; so before the extension builds anything it checks every TFGPU value,
every setting name, and every config file that failed to load, and by default stops the
server (``TFGPU.on_config_error``).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import (
    DeferredConfigList,
    DeferredConfigString,
    JSONFileConfigLoader,
    PyFileConfigLoader,
)

from jupyter_tfgpu.server.config import ENVIRONMENT_VARIABLES, TFGPU
from jupyter_tfgpu.policy.model import resolve_device

SECTION = "TFGPU"
# jupyter_core's JupyterApp loads this one before each application's own config file.
BASE_CONFIG = "jupyter_config"


@dataclass(frozen=True)
class Problem:
    """One admin setting that does not apply, and why."""

    setting: str | None  # "TFGPU.default_policy"; None for a whole config file
    message: str
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As GET config lists it."""
        return {"setting": self.setting, "message": self.message, "file": self.file}

    def __str__(self) -> str:
        where = " in ".join(part for part in (self.setting, self.file) if part)
        return f"{where}: {self.message}"


# -- setting values ----------------------------------------------------------------------------


def setting_problems(config: Config) -> list[Problem]:
    """Each TFGPU setting in ``config`` whose name is unknown or whose value does not validate."""
    if SECTION not in config:
        return []
    known = TFGPU.class_traits(config=True)
    problems = []
    for name, raw in config[SECTION].items():
        setting = f"{SECTION}.{name}"
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {SECTION}.{close[0]}?" if close else ""
            problems.append(Problem(setting, f"there is no such setting{hint}"))
            continue
        try:
            _parse_command_line_value(known[name], raw)
            # Built exactly as the extension builds it, so the trait's own validators run.
            TFGPU(config=Config({SECTION: {name: raw}}))
        except (TraitError, ValueError, TypeError, SyntaxError) as err:
            problems.append(Problem(setting, _why(name, err)))
    return problems


def _parse_command_line_value(trait: Any, raw: Any) -> None:
    """Parse a command-line value here, because traitlets hides a parse error behind the text."""
    if isinstance(raw, DeferredConfigString):
        trait.from_string(str(raw))
    elif isinstance(raw, DeferredConfigList):
        if hasattr(trait, "from_string_list"):
            trait.from_string_list(list(raw))
        elif len(raw) > 1:
            raise TraitError(f"takes one value, got {len(raw)}: {list(raw)}")
        else:
            trait.from_string(raw[0])


def _why(name: str, err: Exception) -> str:
    text = str(err)
    # Our validators already start with the setting's name.
    return text.split(": ", 1)[1] if text.startswith(f"{SECTION}.{name}: ") else text


def environment_problems(config: Config, environ: dict[str, str] | None = None) -> list[Problem]:
    """Environment variables that set a setting's default to a value it does not take."""
    environ = os.environ if environ is None else environ
    given = config[SECTION] if SECTION in config else {}
    problems = []
    for name, variable in ENVIRONMENT_VARIABLES.items():
        if name in given or variable not in environ:
            continue  # a config file or the command line wins over the environment
        try:
            TFGPU(config=Config({SECTION: {name: environ[variable]}}))
        except TraitError as err:
            problems.append(Problem(f"{SECTION}.{name}", f"{_why(name, err)} (from ${variable})"))
    return problems


def without_settings(config: Config, problems: Iterable[Problem]) -> Config:
    """A copy of ``config`` without the TFGPU settings that have a problem: their defaults apply.

    A default that comes from a wrong environment variable is replaced by the built-in one.
    """
    clean = copy.deepcopy(config)
    traits = TFGPU.class_traits(config=True)
    for problem in problems:
        if not problem.setting:
            continue
        name = problem.setting.split(".", 1)[1]
        if SECTION in clean:
            clean[SECTION].pop(name, None)
        if name in ENVIRONMENT_VARIABLES:
            clean[SECTION][name] = traits[name].default_value
    return clean


def on_config_error(config: Config) -> str:
    """'stop' or 'warn': TFGPU.on_config_error as given, else its default; 'stop' if it is wrong."""
    raw = config[SECTION].get("on_config_error") if SECTION in config else None
    try:
        settings = TFGPU(config=Config({SECTION: {"on_config_error": raw}})) if raw else TFGPU()
        return settings.on_config_error
    except TraitError:
        return "stop"


# -- config files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedFile:
    """A config file that exists but that Jupyter could not load."""

    path: str
    error: str
    mentions_tfgpu: bool


def failed_config_files(apps: Iterable[Any]) -> list[FailedFile]:
    """The config files each application looked for, found, and could not load.

    traitlets logs such a file and skips it, and ``loaded_config_files`` lists only those that
    loaded (with at least one setting); loading each other one again tells which failed, and why.
    """
    failed: dict[str, FailedFile] = {}
    for app in apps:
        loaded = {os.path.abspath(path) for path in app.loaded_config_files}
        for path in _config_files(app):
            if path in loaded or path in failed:
                continue
            error = load_error(path)
            if error is not None:
                failed[path] = FailedFile(path, error, _mentions_tfgpu(path))
    return list(failed.values())


def _config_files(app: Any) -> list[str]:
    """The config files (.py and .json) that exist where ``app`` looks for them."""
    names = [BASE_CONFIG, app.config_file_name]
    paths = []
    for folder in app.config_file_paths:
        for name in names:
            for ext in (".py", ".json"):
                path = os.path.abspath(os.path.join(folder, name + ext))
                if os.path.isfile(path) and path not in paths:
                    paths.append(path)
    if getattr(app, "config_file", ""):
        path = os.path.abspath(app.config_file)
        if os.path.isfile(path) and path not in paths:
            paths.append(path)
    return paths


def load_error(path: str) -> str | None:
    """Load one config file as Jupyter does: None if it loads, else the error with its line."""
    folder, name = os.path.split(path)
    loader_class = JSONFileConfigLoader if name.endswith(".json") else PyFileConfigLoader
    try:
        loader_class(name, path=folder, log=logging.getLogger(__name__)).load_config()
    except Exception as err:  # noqa: BLE001 - any error in the admin's file is the answer
        lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if frame.filename == path]
        line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else (lines[-1] if lines else None)
        where = f"line {line}: " if line else ""
        return f"{where}{type(err).__name__}: {err}"
    return None


def _mentions_tfgpu(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return SECTION in file.read()
    except OSError:
        return True  # unreadable now: assume it held the admin's settings


def unread_settings_folders(folders: Iterable[str], name: str = "jupyter_server_config") -> list[Problem]:
    """TFGPU settings in ``<name>.d/*.json``, where jupyter_server reads only jpserver_extensions."""
    problems = []
    for folder in folders:
        directory = os.path.join(folder, name + ".d")
        if not os.path.isdir(directory):
            continue
        for entry in sorted(os.listdir(directory)):
            path = os.path.abspath(os.path.join(directory, entry))
            if not entry.endswith(".json") or not _mentions_tfgpu(path):
                continue
            try:
                with open(path, encoding="utf-8") as file:
                    holds_settings = SECTION in json.load(file)
            except (OSError, ValueError):
                holds_settings = True
            if holds_settings:
                problems.append(
                    Problem(
                        None,
                        f"jupyter_server does not read settings from {name}.d/ (only which "
                        f"extensions are on); move the TFGPU settings to {name}.json",
                        path,
                    )
                )
    return problems


# -- at start ----------------------------------------------------------------------------------


def check_settings(serverapp: Any, log: logging.Logger) -> tuple[TFGPU, list[Problem]]:
    """The TFGPU settings in force and their problems; stops the server when told to.

    Runs before the extension builds anything and before the server listens, so stopping here
    leaves no port open and no kernel running.
    """
    config = serverapp.config
    problems = setting_problems(config) + environment_problems(config)
    apps = [serverapp, *_linked_extension_apps(serverapp)]
    for failed in failed_config_files(apps):
        if failed.mentions_tfgpu:
            problems.append(Problem(None, f"the file failed to load: {failed.error}", failed.path))
        else:
            log.warning("jupyter-tfgpu: the config file %s failed to load: %s", failed.path, failed.error)
    problems.extend(unread_settings_folders(serverapp.config_file_paths))
    if problems and on_config_error(config) == "stop":
        for problem in problems:
            log.critical("jupyter-tfgpu: %s", problem)
        log.critical(
            "jupyter-tfgpu: the server stops rather than run kernels without the admin's GPU "
            "settings. Fix the settings above, or start with TFGPU_ON_CONFIG_ERROR=warn to run "
            "without them."
        )
        serverapp.exit(1)
    for problem in problems:
        log.error("jupyter-tfgpu: %s; starting without it (TFGPU.on_config_error = 'warn')", problem)
    settings = TFGPU(parent=serverapp, config=without_settings(config, problems))
    return settings, problems


def _linked_extension_apps(serverapp: Any) -> list[Any]:
    """Extension applications that loaded config files of their own (jupyter_lab_config.py...)."""
    manager = getattr(serverapp, "extension_manager", None)
    if manager is None:
        return []
    return [
        app
        for name, apps in manager.extension_apps.items()
        if manager.linked_extensions.get(name)
        for app in apps
        if hasattr(app, "loaded_config_files")
    ]


# -- once the GPUs are known -------------------------------------------------------------------


def unknown_devices(allowed: Iterable[int | str] | None, devices: list[Any]) -> list[int | str]:
    """Entries of allowed_devices that name no GPU (or MIG slice) of this server."""
    return [token for token in allowed or () if resolve_device(token, devices) is None]


def check_allowed_devices(
    allowed: Iterable[int | str] | None,
    sampler: Any,
    problems: list[Problem],
    log: logging.Logger,
) -> None:
    """Warn about allowed_devices that name no GPU, now or once the sampler first reads the GPUs."""
    if not allowed:
        return

    def check() -> None:
        unknown = unknown_devices(allowed, sampler.devices)
        if not unknown:
            return
        there = ", ".join(f"{d.index} ({d.uuid})" for d in sampler.devices) or "none"
        problem = Problem(
            "TFGPU.allowed_devices",
            f"names no GPU of this server: {', '.join(map(str, unknown))} (the GPUs here: {there})",
        )
        problems.append(problem)
        log.warning("jupyter-tfgpu: %s", problem)

    if sampler.available:
        check()
        return

    # NVML may open only on a retry (a driver still loading): check the first time it does.
    def on_snapshot(snapshot: Any) -> None:
        if sampler.available:
            unsubscribe()
            check()

    unsubscribe = sampler.subscribe(on_snapshot)

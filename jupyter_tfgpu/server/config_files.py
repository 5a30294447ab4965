"""The config files Jupyter looked for and could not load, and the folder it never reads.

jupyter_server logs a config file that raises and carries on without it; these find such files
(with the line and the error), so that the start-up check can tell whether the admin's TFGPU
settings were in them.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from jupyter_tfgpu.server.config_check import SECTION, Problem

# jupyter_core's JupyterApp loads this one before each application's own config file.
BASE_CONFIG = "jupyter_config"


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
            return SECTION.lower() in file.read().lower()
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


def linked_extension_apps(serverapp: Any) -> list[Any]:
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

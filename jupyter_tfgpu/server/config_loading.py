"""The TFGPU settings at start: checked before the extension builds anything.

A setting that does not apply must never leave a server running kernels without the admin's
caps unnoticed. jupyter_server only logs a config file that raises, or an extension that fails
to load, and carries on; so before the extension builds anything this checks every TFGPU value
(as given under every section that reaches TFGPU, the command line winning), every setting
name, settings under sections nothing reads, and every config file that failed to load, and by
default stops the server (``TFGPU.on_config_error``). An error while the extension loads stops
it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from jupyter_tfgpu.server.caps_file import read_within
from jupyter_tfgpu.server.caps_watcher import CapsFile
from jupyter_tfgpu.server.config import TFGPU
from jupyter_tfgpu.server.config_check import (
    SECTION,
    Problem,
    combination_problems,
    environment_problems,
    on_config_error,
    setting_problems,
    without_settings,
)
from jupyter_tfgpu.server.config_sources import given_settings, misplaced_settings, reaching_sections
from jupyter_tfgpu.server.config_files import (
    failed_config_files,
    linked_extension_apps,
    unread_settings_folders,
)

STOPS = (
    "jupyter-tfgpu: the server stops rather than run kernels without the admin's GPU settings. "
    "Fix the settings above, or start with TFGPU_ON_CONFIG_ERROR=warn to run without them."
)


def check_settings(serverapp: Any, log: logging.Logger) -> tuple[TFGPU, list[Problem], CapsFile | None]:
    """The TFGPU settings in force, their problems, and the caps file (None without one); stops
    the server when told to.

    Runs before the extension builds anything and before the server listens, so stopping here
    leaves no port open and no kernel running. The caps file's problems are its own (they go
    when the file is fixed, see ``caps_watcher``), not among those returned.
    """
    given = given_settings(serverapp)
    value_problems = setting_problems(given.config, given.origin) + environment_problems(given.config)
    value_problems += combination_problems(TFGPU(config=without_settings(given.config, value_problems)))
    problems = value_problems + misplaced_settings(serverapp.config, reaching_sections(serverapp))
    apps = [serverapp, *linked_extension_apps(serverapp)]
    for failed in failed_config_files(apps):
        if failed.mentions_tfgpu:
            problems.append(Problem(None, f"the file failed to load: {failed.error}", failed.path))
        else:
            log.warning("jupyter-tfgpu: the config file %s failed to load: %s", failed.path, failed.error)
    problems.extend(unread_settings_folders(serverapp.config_file_paths))
    # Built from the settings as given only, with no parent: nothing re-reads the sections.
    settings = TFGPU(config=without_settings(given.config, value_problems))
    caps = None
    if settings.caps_file:
        base = {name: getattr(settings, name) for name in settings.trait_names(config=True)}
        caps = CapsFile(settings.caps_file, base, given.command_line, log=log)
        for name, value in caps.at_start(read_within(caps.read, caps.path)).items():
            setattr(settings, name, value)
    refused = caps.problems if caps is not None else []
    if (problems or refused) and on_config_error(given.config) == "stop":
        for problem in problems + refused:
            log.critical("jupyter-tfgpu: %s", problem)
        log.critical(STOPS)
        serverapp.exit(1)
    for problem in problems:
        log.error("jupyter-tfgpu: %s; starting without it (TFGPU.on_config_error = 'warn')", problem)
    for problem in refused:
        log.error(
            "jupyter-tfgpu: %s; starting without the caps file (TFGPU.on_config_error = 'warn'); "
            "it is read again when it changes",
            problem,
        )
    return settings, problems, caps


def refuse_hard_caps(serverapp: Any, log: logging.Logger, why: str, problems: list[Problem]) -> None:
    """The hard-caps mode the admin named cannot be used (``why``): stop the server, or with
    TFGPU.on_config_error = 'warn' run with hard caps off and list it in GET config."""
    problem = Problem(f"{SECTION}.hard_caps", why)
    if on_config_error(given_settings(serverapp).config) == "stop":
        log.critical("jupyter-tfgpu: %s", problem)
        log.critical(STOPS)
        serverapp.exit(1)
    log.error("jupyter-tfgpu: %s (TFGPU.on_config_error = 'warn')", problem)
    problems.append(problem)


def caps_in_force(
    settings: Mapping[str, Any],
    provisioner: Mapping[str, Any],
    caps_file: CapsFile | None = None,
    hard_caps: str | None = None,
) -> str:
    """One line for the start-up log: the caps, policies and enforcement this server runs with,
    how the caps are held (``hard_caps``, said by the hard caps in force), and which of them the
    caps file gave."""

    def shown(value: Any) -> str:
        return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)

    allowed = settings["allowed_devices"]
    caps = ", ".join(
        [
            f"max_memory_mb={settings['max_memory_mb'] or 'none'}",
            f"max_threads={settings['max_threads'] or 'none'}",
            f"allowed_devices={'all' if allowed is None else shown(allowed)}",
            f"force_memory_growth={settings['force_memory_growth']}",
            f"allow_user_policies={settings['allow_user_policies']}",
            f"forced_policy={shown(settings['forced_policy'])}",
            f"default_policy={shown(settings['default_policy'])}",
        ]
    )
    if settings["enforcement"] == "off":
        enforcement = "enforcement=off"
    else:
        enforcement = (
            f"enforcement={settings['enforcement']} after {settings['enforcement_grace']:g} s over "
            f"the cap (at most {settings['max_actions_per_hour']} actions per kernel per hour)"
        )
    if settings["idle_timeout"]:
        idle = (
            f"idle reaping: {settings['idle_action']} after {settings['idle_timeout']:g} s idle "
            f"holding >= {settings['idle_min_memory_mb']} MiB"
        )
    else:
        idle = "idle reaping off"
    applied = (
        "policies applied at kernel start"
        if provisioner.get("default")
        else f"policies not applied to kernels: {provisioner.get('reason')}"
    )
    line = f"jupyter-tfgpu: caps in force: {caps}; {enforcement}; {idle}; {applied}"
    if hard_caps:
        line = f"{line}; {hard_caps}"
    if caps_file is None:
        return line
    if caps_file.applied_at is None:
        return f"{line}; caps file {caps_file.path}: not in force (see the errors above), read again when it changes"
    given = ", ".join(caps_file.from_file) or "no setting"
    return f"{line}; caps file {caps_file.path}: {given} from it, read again when it changes"


def stop_unless_warned(serverapp: Any, log: logging.Logger, err: Exception) -> None:
    """The extension failed to load: stop the server, unless TFGPU.on_config_error is 'warn'."""
    try:
        mode = on_config_error(given_settings(serverapp).config)
    except Exception:  # noqa: BLE001 - in doubt, stop
        mode = "stop"
    what = f"jupyter-tfgpu: the extension failed to load: {type(err).__name__}: {err}"
    if mode == "stop":
        log.critical(what, exc_info=err)
        log.critical(
            "jupyter-tfgpu: the server stops rather than run kernels without the admin's GPU "
            "settings; with TFGPU_ON_CONFIG_ERROR=warn it runs without jupyter-tfgpu instead."
        )
        serverapp.exit(1)
    log.error("%s; the server runs without jupyter-tfgpu (TFGPU.on_config_error = 'warn')", what, exc_info=err)

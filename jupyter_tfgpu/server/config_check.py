"""Checks of the admin's TFGPU settings: each value and name, the environment, the GPUs named.

``config_loading`` runs them at start (and stops the server on a problem); the GPUs named are
checked once the sampler first reads the GPUs.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from traitlets import Container, Dict, TraitError
from traitlets.config import Config
from traitlets.config.loader import DeferredConfigList, DeferredConfigString

from jupyter_tfgpu.server.config import ENVIRONMENT_VARIABLES, MAX_HISTORY_SAMPLES, TFGPU
from jupyter_tfgpu.policy.model import resolve_device

SECTION = "TFGPU"


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


def setting_problems(
    config: Config, origin: Callable[[str], str | None] | None = None
) -> list[Problem]:
    """Each TFGPU setting in ``config`` whose name is unknown or whose value does not validate.

    ``origin`` names where a setting was given when that was not plainly ``TFGPU.name``.
    """
    if SECTION not in config:
        return []
    known = TFGPU.class_traits(config=True)
    problems = []
    for name, raw in config[SECTION].items():
        setting = f"{SECTION}.{name}"
        given_as = origin(name) if origin else None
        suffix = f" (given as {given_as})" if given_as else ""
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {SECTION}.{close[0]}?" if close else ""
            problems.append(Problem(setting, f"there is no such setting{hint}{suffix}"))
            continue
        raw = last_if_single(name, raw)
        try:
            _parse_command_line_value(known[name], raw)
            # Built exactly as the extension builds it, so the trait's own validators run.
            TFGPU(config=Config({SECTION: {name: raw}}))
        except (TraitError, ValueError, TypeError, SyntaxError) as err:
            problems.append(Problem(setting, _why(name, err) + suffix))
    return problems


def last_if_single(name: str, value: Any) -> Any:
    """A single-valued setting given several times on the command line takes the last value.

    (A list or dict setting given several times takes each as items, see config_traits.JSONList.)
    """
    trait = TFGPU.class_traits(config=True).get(name)
    if isinstance(value, DeferredConfigList) and value and not isinstance(trait, (Container, Dict)):
        return DeferredConfigString(value[-1])
    return value


def _parse_command_line_value(trait: Any, raw: Any) -> None:
    """Parse a command-line value here, because traitlets hides a parse error behind the text."""
    if isinstance(raw, DeferredConfigString):
        trait.from_string(str(raw))
    elif isinstance(raw, DeferredConfigList):
        trait.from_string_list(list(raw))


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


def combination_problems(settings: TFGPU) -> list[Problem]:
    """Settings that are each valid but do not fit together; the last one named is left out."""
    samples = math.ceil(settings.history_seconds / settings.sample_interval)
    if samples <= MAX_HISTORY_SAMPLES:
        return []
    return [
        Problem(
            f"{SECTION}.history_seconds",
            f"{settings.history_seconds} s of history every {settings.sample_interval:g} s "
            f"(sample_interval) is {samples:,} samples per GPU, more than "
            f"{MAX_HISTORY_SAMPLES:,}; keep less history or sample less often",
        )
    ]


def on_config_error(config: Config) -> str:
    """'stop' or 'warn': TFGPU.on_config_error as given, else its default; 'stop' if it is wrong."""
    raw = config[SECTION].get("on_config_error") if SECTION in config else None
    try:
        settings = TFGPU(config=Config({SECTION: {"on_config_error": raw}})) if raw else TFGPU()
        return settings.on_config_error
    except TraitError:
        return "stop"


# -- once the GPUs are known -------------------------------------------------------------------


def unknown_devices(named: Iterable[int | str] | None, devices: list[Any]) -> list[int | str]:
    """Entries of a list of GPUs that name no GPU (or MIG slice) of this server."""
    return [token for token in named or () if resolve_device(token, devices) is None]


def named_devices(settings: Any) -> dict[str, tuple[str, list[int | str]]]:
    """The GPUs each setting names, with how its message starts: allowed_devices, and the
    devices of default_policy and forced_policy ("auto", null and [] name no GPU by design)."""
    named: dict[str, tuple[str, list[int | str]]] = {}
    if settings.allowed_devices:
        named[f"{SECTION}.allowed_devices"] = ("", list(settings.allowed_devices))
    for name in ("default_policy", "forced_policy"):
        devices = getattr(settings, name).get("devices")
        if isinstance(devices, list) and devices:
            named[f"{SECTION}.{name}"] = ("devices ", devices)
    return named


def check_devices(settings: Any, sampler: Any, problems: list[Problem], log: logging.Logger) -> None:
    """Warn about GPUs the settings name that this server does not have, now or once the sampler
    first reads the GPUs (GPUs come and go: this never stops the server)."""
    named = named_devices(settings)
    if not named:
        return

    def check() -> None:
        there = ", ".join(f"{d.index} ({d.uuid})" for d in sampler.devices) or "none"
        for setting, (field, tokens) in named.items():
            unknown = unknown_devices(tokens, sampler.devices)
            if not unknown:
                continue
            listed = ", ".join(map(str, unknown))
            problem = Problem(setting, f"{field}names no GPU of this server: {listed} (the GPUs here: {there})")
            problems.append(problem)
            log.warning("jupyter-tfgpu: %s", problem)

    if sampler.available:
        check()
        return

    # The sampler opens NVML in its own thread, and may succeed only on a retry (a driver still
    # loading): check the first time the GPUs are known.
    def on_snapshot(snapshot: Any) -> None:
        if sampler.available:
            unsubscribe()
            check()

    unsubscribe = sampler.subscribe(on_snapshot)

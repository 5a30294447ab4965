"""Trait types for settings given on a command line: a dict or a list as JSON (or a Python
literal), or as repeated ``key=value`` / item arguments, as JupyterHub's ``Spawner.args`` and
Kubernetes manifests carry them."""

from __future__ import annotations

import ast
import json
from typing import Any

from traitlets import Dict, List, TraitError


def parse_value(text: str) -> Any:
    """A value given as text: JSON, else a Python literal, else the text itself."""
    # JSON first: it is what JupyterHub's Spawner.args and Kubernetes manifests carry
    # (true, null); Python literals (True, None) are what the config-file examples use.
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


class JSONDict(Dict):
    """A Dict that can be given on the command line as JSON or as repeated key=value items."""

    def from_string(self, s: str) -> dict | None:
        """``{"memory_growth": true}`` (JSON or a Python literal) or one ``key=value``."""
        if s == "None" and self.allow_none:
            return None
        value = parse_value(s)
        if isinstance(value, dict):
            return value
        if "=" in s:
            return self.item_from_string(s)
        raise TraitError(
            'expected a JSON object such as {"memory_growth": true}, or key=value, got ' + repr(s)
        )

    def from_string_list(self, s_list: list[str]) -> dict | None:
        """Each item a JSON object or a ``key=value``, merged in order."""
        combined: dict = {}
        for s in s_list:
            value = self.from_string(s)
            if value is None:
                return None
            combined.update(value)
        return combined

    def item_from_string(self, s: str) -> dict:
        """``key=value``, the value read as JSON or a Python literal (true, 512, [0, 1], auto)."""
        if "=" not in s:
            raise TraitError(f"expected key=value, got {s!r}")
        key, text = s.split("=", 1)
        value = self._value_trait.from_string(text) if self._value_trait else parse_value(text)
        return {key.strip(): value}


class JSONList(List):
    """A List that can be given on the command line as JSON or as repeated items."""

    def from_string(self, s: str) -> list | None:
        """``[0, 1]`` (JSON or a Python literal), or a single item."""
        if s == "None" and self.allow_none:
            return None
        value = parse_value(s)
        if isinstance(value, list):
            return value
        return [self.item_from_string(s)]

    def from_string_list(self, s_list: list[str]) -> list | None:
        """One JSON list, or one item per ``--TFGPU.name=item``."""
        if len(s_list) == 1:
            return self.from_string(s_list[0])
        return [self.item_from_string(s) for s in s_list]

    def item_from_string(self, s: str, index: int | None = None) -> Any:
        """One item, read by the item trait (a JSON object for a list of dicts)."""
        return self._trait.from_string(s) if self._trait else parse_value(s)

    def default_value_repr(self) -> str:
        """``None`` for a list whose default is None (traitlets would show [])."""
        return "None" if self.default_value is None else super().default_value_repr()

"""The names one GPU goes by, so every reader of a GPU row matches them alike."""

from __future__ import annotations

from typing import Any, Mapping


def gpu_keys(row: Mapping[str, Any]) -> frozenset[str]:
    """A snapshot GPU row's UUID, its index as a string and its MIG instances' UUIDs.

    A kernel's reporter names a GPU by UUID where it knows one (a MIG instance's inside a MIG
    slice), else by its index.
    """
    instances = (row.get("mig") or {}).get("instances") or ()
    return frozenset({row.get("uuid"), str(row.get("index"))} | {m["uuid"] for m in instances})

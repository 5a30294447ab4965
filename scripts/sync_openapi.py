"""Copy the policy JSON Schema into the OpenAPI spec, so both describe one policy.

    python scripts/sync_openapi.py           # rewrite jupyter_tfgpu/server/api/openapi.yaml
    python scripts/sync_openapi.py --check   # exit 1 if the spec's copy is stale

The policy schema (`jupyter_tfgpu/policy/policy.schema.json`) is the one source of truth for
policy fields: it validates REST input and drives the magic, the widget editor and the lab
panel. OpenAPI 3.1 schemas are JSON Schema 2020-12, so the spec embeds it unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "jupyter_tfgpu" / "server" / "api" / "openapi.yaml"
POLICY = ROOT / "jupyter_tfgpu" / "policy" / "policy.schema.json"


def policy_components() -> dict:
    """The spec's Policy, EffectivePolicy and Source schemas, from the policy schema."""
    schema = json.loads(POLICY.read_text())
    policy = {k: v for k, v in schema.items() if not k.startswith("$")}
    fields = list(policy["properties"])
    return {
        "Policy": policy,
        "Source": {
            "type": ["string", "null"],
            "enum": ["default", "notebook", "cap", None],
            "description": "Where a field's value came from; null when nothing sets it.",
        },
        "EffectivePolicy": {
            "description": "The admin default, then the notebook's own fields, then clamped by the admin caps.",
            "type": "object",
            "required": [*fields, "sources"],
            "additionalProperties": False,
            "properties": {
                **policy["properties"],
                "sources": {
                    "type": "object",
                    "required": fields,
                    "additionalProperties": False,
                    "properties": {f: {"$ref": "#/components/schemas/Source"} for f in fields},
                },
            },
        },
    }


def synced(spec: dict) -> dict:
    """The spec with its policy schemas replaced by the current ones."""
    schemas = spec["components"]["schemas"]
    schemas.pop("Devices", None)
    schemas.update(policy_components())
    return spec


def main() -> int:
    """Rewrite or check the spec."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    spec = yaml.safe_load(SPEC.read_text())
    current = json.dumps(spec, sort_keys=True)
    new = synced(spec)
    if args.check:
        return 0 if json.dumps(new, sort_keys=True) == current else 1
    text = yaml.safe_dump(new, sort_keys=False, width=100, allow_unicode=True)
    SPEC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the admin settings table (from the TFGPU traits' help) or check README.md holds it.

    python scripts/config_table.py           # print the Markdown table
    python scripts/config_table.py --write   # refresh the table between the README markers
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_tfgpu.server.config import ENVIRONMENT_VARIABLES, TFGPU  # noqa: E402

# Defaults that depend on the machine, shown as what they are rather than this machine's value.
SHOWN_DEFAULTS = {"policy_store_path": "<Jupyter data dir>/tfgpu/policies.json"}  # in backticks

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"


def table() -> str:
    """One row per configurable trait, in definition order."""
    rows = ["| setting | default | what it does |", "|---|---|---|"]
    traits = TFGPU.class_traits(config=True)
    order = [name for name, _ in inspect.getmembers(TFGPU) if name in traits]
    source = inspect.getsource(TFGPU)
    order.sort(key=lambda name: source.find(f"    {name} = "))
    for variable in ENVIRONMENT_VARIABLES.values():
        os.environ.pop(variable, None)  # document the defaults, not this shell's overrides
    defaults = TFGPU()
    for name in order:
        trait = traits[name]
        shown = SHOWN_DEFAULTS.get(name) or json.dumps(getattr(defaults, name))
        text = " ".join(inspect.cleandoc(trait.help).split()).replace("|", "\\|")
        rows.append(f"| `TFGPU.{name}` | `{shown}` | {text} |")
    return "\n".join(rows)


def readme_block() -> str:
    """The table as it belongs in the README."""
    return f"{BEGIN}\n{table()}\n{END}"


def main() -> int:
    """Print, or write into README.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    if not args.write:
        print(table())
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + readme_block() + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())

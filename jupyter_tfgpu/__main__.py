"""`python -m jupyter_tfgpu --help-all`: the admin manual (every TFGPU setting); otherwise starts
a Jupyter server with the extension, like `jupyter server`."""

from __future__ import annotations

import sys

from traitlets import TraitType

from jupyter_tfgpu.server.config import ENVIRONMENT_VARIABLES, TFGPU
from jupyter_tfgpu.server.config_traits import JSONDict, JSONList

HEADER = """jupyter-tfgpu settings: the traits of the TFGPU configurable.

Give each one on the server's command line, which wins over every config file:
    --TFGPU.max_memory_mb=20480
    --TFGPU.default_policy='{"memory_growth": true}'     (dicts and lists as JSON)
    --TFGPU.default_policy memory_growth=true           (or key=value, repeated per key)
or in jupyter_server_config.py (c.TFGPU.max_memory_mb = 20480) or jupyter_server_config.json
({"TFGPU": {"max_memory_mb": 20480}}). Environment variables set only defaults:
{env}.
A wrong setting stops the server (see TFGPU.on_config_error).
The whole server's options: jupyter server --help-all.
"""


def settings_manual() -> str:
    """Every TFGPU setting with its help text, in the order config.py defines them."""
    env = ", ".join(f"{variable} (TFGPU.{name})" for name, variable in ENVIRONMENT_VARIABLES.items())
    parts = [HEADER.replace("{env}", env)]
    for name, trait in vars(TFGPU).items():
        if isinstance(trait, TraitType) and trait.metadata.get("config"):
            parts.append(_usage(name, trait) + TFGPU.class_get_trait_help(trait).split("\n", 1)[1])
    return "\n".join(parts) + "\n"


def _usage(name: str, trait: TraitType) -> str:
    """The option's first line; traitlets names no JSON form for dicts and lists."""
    if isinstance(trait, JSONDict):
        return f"--TFGPU.{name}=<JSON object>  or  --TFGPU.{name} <key>=<value> ...\n"
    if isinstance(trait, JSONList):
        return f"--TFGPU.{name}=<JSON list>  or  --TFGPU.{name}=<item> ...\n"
    return f"--TFGPU.{name}=<{type(trait).__name__}>\n"


def main(argv: list[str] | None = None) -> None:
    """Print the settings manual for --help-all; otherwise launch the server with the extension."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help-all" in argv:
        sys.stdout.write(settings_manual())
        return
    from jupyter_tfgpu.server.app import TFGPUApp  # only when a server starts: the manual needs no server

    TFGPUApp.launch_instance(argv)


if __name__ == "__main__":
    main()

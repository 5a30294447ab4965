"""jupyter-tfgpu: see who holds which GPU and set per-notebook GPU policies from Jupyter."""

from jupyter_tfgpu._version import __version__

__all__ = ["__version__"]


def _jupyter_server_extension_points() -> list[dict]:
    """Where jupyter_server finds the server extension."""
    from jupyter_tfgpu.server.app import TFGPUApp

    return [{"module": "jupyter_tfgpu", "app": TFGPUApp}]


def _jupyter_labextension_paths() -> list[dict]:
    """Where JupyterLab finds the prebuilt lab extension."""
    return [{"src": "labextension", "dest": "jupyter-tfgpu"}]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext jupyter_tfgpu``: register the ``%tfgpu`` magic."""
    from jupyter_tfgpu.in_kernel.magic import load_ipython_extension as load

    load(ipython)

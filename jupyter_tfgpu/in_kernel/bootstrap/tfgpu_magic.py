"""Loads the ``%tfgpu`` magic in kernels the jupyter-tfgpu server starts, failing soft.

The provisioner adds ``--IPKernelApp.extra_extensions=tfgpu_magic`` to ipykernel command lines;
this module sits in the bootstrap folder the provisioner puts on PYTHONPATH, so it is found even
when the kernel runs in another Python environment. There, if ``jupyter_tfgpu`` (or what its
magic needs) cannot be imported, ``%tfgpu`` says how to install it, instead of the kernel logging
a traceback at every start and ``%tfgpu`` being unknown.
"""

import sys


def load_ipython_extension(ipython):
    """Register ``%tfgpu`` from the installed package, or a stub that says what is missing."""
    try:
        from jupyter_tfgpu.in_kernel.magic import load_ipython_extension as load
    except Exception as exc:  # noqa: BLE001 - not installed in this environment, or too old
        ipython.register_magic_function(_missing(exc), "line", "tfgpu")
        return
    load(ipython)


def _missing(exc):
    why = f"{type(exc).__name__}: {exc}"

    def tfgpu(line=""):
        """%tfgpu is not available in this kernel's Python environment."""
        sys.stderr.write(
            "jupyter-tfgpu: %tfgpu needs the jupyter-tfgpu package in this kernel's Python "
            f"environment ({sys.prefix}): {sys.executable} -m pip install jupyter-tfgpu ({why})\n"
        )

    return tfgpu

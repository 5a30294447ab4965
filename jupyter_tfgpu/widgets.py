"""ipywidgets panels for notebooks: ``from jupyter_tfgpu.widgets import GPUPanel, PolicyEditor``.

``GPUPanel()`` shows live utilization and memory per GPU with this kernel's share highlighted;
``PolicyEditor()`` edits this notebook's GPU policy. They run inside a kernel and need ipywidgets
(``pip install 'jupyter-tfgpu[widgets]'``).
"""

try:
    from jupyter_tfgpu.in_kernel.policy_editor import PolicyEditor
    from jupyter_tfgpu.in_kernel.widgets import GPUPanel
except ImportError as exc:  # pragma: no cover - depends on the environment
    if getattr(exc, "name", None) not in ("ipywidgets", "traitlets"):
        raise
    raise ImportError(
        "jupyter_tfgpu.widgets needs ipywidgets: pip install 'jupyter-tfgpu[widgets]'"
    ) from None

__all__ = ["GPUPanel", "PolicyEditor"]

"""Post-import hooks that apply a notebook's GPU policy when a kernel process imports a framework.

Loaded by this folder's ``sitecustomize.py`` when ``TFGPU_POLICY`` is set. ``install()`` puts a
small finder first on ``sys.meta_path`` (the post-import hook pattern of OpenTelemetry and
ddtrace): the first time ``tensorflow``, ``torch`` or ``jax`` is imported, the finder wraps the
real loader's ``exec_module`` so the policy's in-process knobs are applied right after the
framework's ``__init__`` finished, before user code can run an op, once per process.

This module is on the start-up path of every Python process a kernel starts, so it holds only the
hook (and takes the modules it watches from ``tfgpu_protocol``); the policy code lives in
``tfgpu_apply`` next to it, which pulls in the rest of the folder, and is imported with the first
framework. No module of the folder imports this one back. ``tfgpu_apply``'s public names
(``record``, ``apply_now``, ``apply_tensorflow``, ``apply_torch``, ``apply_jax``,
``load_policy``, ...) are reachable here too: ``tfgpu_bootstrap.record()``.
Nothing here imports ``jupyter_tfgpu`` or a framework, and no failure here breaks an import.
"""

import os
import sys

from tfgpu_protocol import HOOKED_MODULES

_HERE = os.path.dirname(os.path.abspath(__file__))
_hooked = set()  # frameworks whose first import this process has seen
_searching = set()  # names being resolved by the finders after ours (no recursion)


def _policy_module():
    """``tfgpu_apply`` from this folder, even if the user has since changed sys.path."""
    module = sys.modules.get("tfgpu_apply")
    if module is None:
        sys.path.insert(0, _HERE)
        try:
            import tfgpu_apply as module
        finally:
            sys.path.remove(_HERE)
    return module


def _failed(name, exc):
    """Report a failure of the hook itself; the user's import goes on regardless."""
    message = f"could not hook the import ({type(exc).__name__}: {exc})"
    try:
        _policy_module().error(name, message)
    except Exception:
        try:
            sys.stderr.write(f"jupyter-tfgpu: GPU policy not applied to {name}: {message}\n")
        except Exception:
            pass


def _after_import(name, module):
    _hooked.add(name)
    try:
        _policy_module().framework_imported(name, module)
    except Exception as exc:
        _failed(name, exc)


class _HookedLoader:
    """Stands in for a loader whose ``exec_module`` cannot be replaced on the instance."""

    def __init__(self, loader, exec_module):
        self._loader = loader
        self.exec_module = exec_module

    def __getattr__(self, name):
        return getattr(self._loader, name)


class PostImportFinder:
    """First on ``sys.meta_path``: hooks the first import of each framework, passes on the rest."""

    def find_spec(self, fullname, path=None, target=None):
        """The real spec, ``exec_module`` wrapped, for a framework not seen yet; else None."""
        if fullname not in HOOKED_MODULES or fullname in _hooked or fullname in _searching:
            return None
        try:
            return self._hooked_spec(fullname, path, target)
        except Exception as exc:
            _failed(fullname, exc)
            return None

    def _hooked_spec(self, name, path, target):
        _searching.add(name)
        try:
            finders = list(sys.meta_path)
            rest = finders[finders.index(self) + 1 :] if self in finders else finders
            spec = None
            for finder in rest:
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    break
        finally:
            _searching.discard(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        real_exec = loader.exec_module

        def exec_module(module):
            try:
                real_exec(module)
            finally:
                if getattr(loader, "__dict__", {}).get("exec_module") is exec_module:
                    del loader.exec_module
            _after_import(name, module)

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):
            spec.loader = _HookedLoader(loader, exec_module)
        return spec

    def invalidate_caches(self):
        """Nothing cached here."""


_finder = PostImportFinder()


def install():
    """Put the finder first on ``sys.meta_path`` (idempotent); hook frameworks already imported."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    for name in HOOKED_MODULES:
        module = sys.modules.get(name)
        if module is not None and name not in _hooked:
            _after_import(name, module)


def __getattr__(name):
    # PEP 562: the policy API lives in tfgpu_apply, loaded on first use.
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(_policy_module(), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_policy_module().__all__))

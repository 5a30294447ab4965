"""jupyter-tfgpu kernel bootstrap: run the sitecustomize this one shadows, then hook GPU frameworks.

The kernel provisioner prepends this folder to PYTHONPATH, so this runs at start-up of every
Python process a kernel starts. It stays tiny on purpose (its cost is paid by each of them):
the policy is only read when a framework is imported, in ``tfgpu_bootstrap``.
"""

import os
import sys

# No f-strings here: any Python a kernel starts parses this file (even `!python2 old.py`).
_CHAINED_ERROR = (
    "Error in sitecustomize (chained by jupyter-tfgpu); set PYTHONVERBOSE for traceback:\n{}: {}\n"
)
_NOT_INSTALLED = "jupyter-tfgpu: GPU policy hooks not installed ({}: {})\n"
# tfgpu_protocol.POLICY_ENV, copied rather than imported so that a process without a policy
# imports nothing more; tests/project/test_protocol.py pins it like the others.
POLICY_ENV = "TFGPU_POLICY"


def _chain():
    """Import the next ``sitecustomize`` on sys.path; report its errors as site.py would."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.get("sitecustomize")
    removed = [(i, p) for i, p in enumerate(sys.path) if os.path.abspath(p or ".") == here]
    for index, _ in reversed(removed):
        del sys.path[index]
    sys.modules.pop("sitecustomize", None)
    try:
        return __import__("sitecustomize")
    except ImportError as exc:
        if getattr(exc, "name", "sitecustomize") != "sitecustomize":  # Python 2: no .name
            _report(exc)
    except Exception as exc:
        _report(exc)
    finally:
        # Put back our folder where it was (keeping what theirs added) and ourselves.
        for index, path in removed:
            sys.path.insert(index, path)
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    return None


def _report(exc):
    """Show an error of the chained sitecustomize the way site.py shows its own."""
    if sys.flags.verbose:
        sys.excepthook(*sys.exc_info())
    else:
        sys.stderr.write(_CHAINED_ERROR.format(type(exc).__name__, exc))


_chained = _chain()

# The hooks themselves need Python 3.7 or later.
if os.environ.get(POLICY_ENV) and sys.version_info >= (3, 7):
    try:
        import tfgpu_bootstrap

        tfgpu_bootstrap.install()
    except Exception as exc:
        sys.stderr.write(_NOT_INSTALLED.format(type(exc).__name__, exc))

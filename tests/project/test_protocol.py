"""The kernel bootstrap's copies of the protocol names are the originals' (jupyter_tfgpu/protocol.py).

The bootstrap runs in any Python and imports nothing of ``jupyter_tfgpu``, so it keeps copies in
``tfgpu_protocol.py`` (and ``sitecustomize.py`` one more, so that a start-up without a policy
imports nothing). These tests load them as a kernel does, from the folder the provisioner puts on
PYTHONPATH, and pin each to the original; a copy anywhere else in the bootstrap fails.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

from jupyter_tfgpu import protocol
from jupyter_tfgpu.server.kernels import channel
from jupyter_tfgpu.server.kernels.provisioner import bootstrap_dir
from tests.bootstrap_helpers import last_json, run_python

BOOTSTRAP = Path(bootstrap_dir())
# Where copies may live: the bootstrap's protocol module, and the one variable sitecustomize reads
# at start-up.
HOLDERS = ("tfgpu_protocol.py", "sitecustomize.py")


def load_copies():
    """``tfgpu_protocol`` from the bootstrap folder, as its own module (no package, no sys.path)."""
    path = BOOTSTRAP / "tfgpu_protocol.py"
    spec = importlib.util.spec_from_file_location("tfgpu_protocol_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_constants(module) -> dict:
    """A module's own ``UPPER_CASE`` names."""
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and not name.startswith("_")
    }


def module_constants(path: Path) -> dict:
    """Module-level ``NAME = <literal>`` assignments of a source file, without running it."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return found


def test_each_copy_in_the_bootstrap_equals_the_protocols():
    """Every constant of tfgpu_protocol exists in jupyter_tfgpu.protocol with the same value."""
    # Given the bootstrap's protocol module, loaded as a kernel loads it
    copies = public_constants(load_copies())
    # Then each copy is the original, and all the names the bootstrap needs are there
    assert copies == {name: getattr(protocol, name, None) for name in copies}
    assert {
        "AUTH_SCHEME",
        "POLICY_ENV",
        "SERVER_URL_ENV",
        "KERNEL_TOKEN_ENV",
        "RECORD_DIR_ENV",
        "REPORT_INTERVAL_ENV",
        "REPORTING_FRAMEWORKS",
        "HOOKED_MODULES",
    } <= set(copies)


def test_sitecustomize_reads_the_protocols_policy_variable():
    """sitecustomize keeps its own copy (an import would cost every start-up without a policy)."""
    # Given sitecustomize's constants, read without running it (it chains to other ones)
    constants = module_constants(BOOTSTRAP / "sitecustomize.py")
    # Then its policy variable is the protocol's
    assert constants["POLICY_ENV"] == protocol.POLICY_ENV


def test_no_other_bootstrap_module_keeps_a_copy():
    """Outside the holders, no bootstrap module spells a protocol value as a literal."""
    # Given the protocol's values
    values = set(public_constants(protocol).values())
    # When every other bootstrap module's string and tuple literals are collected
    literals = {}
    for path in sorted(BOOTSTRAP.glob("*.py")):
        if path.name in HOLDERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            try:
                value = ast.literal_eval(node) if isinstance(node, ast.Tuple) else None
            except (ValueError, TypeError, SyntaxError):
                value = None  # a tuple of names or calls: not a literal
            if isinstance(node, ast.Constant):
                value = node.value
            try:
                if isinstance(value, (str, tuple)) and value in values:
                    literals.setdefault(path.name, []).append(value)
            except TypeError:
                pass  # a tuple holding a list or a dict: no protocol value
    # Then there are none: they all take the names from tfgpu_protocol
    assert literals == {}


def test_the_reporter_sends_what_the_server_accepts():
    """In a kernel-like process, the reporter's frameworks and scheme are the kernel channel's."""
    # Given a fresh interpreter with the bootstrap on PYTHONPATH, as the provisioner starts one
    proc = run_python(
        """
        import json, tfgpu_bootstrap, tfgpu_report
        print(json.dumps({"frameworks": tfgpu_report.REPORTING_FRAMEWORKS,
                          "scheme": tfgpu_report.AUTH_SCHEME,
                          "hooked": tfgpu_bootstrap.HOOKED_MODULES}))
        """
    )
    seen = last_json(proc)
    # Then the reporter sends the frameworks and the auth scheme the server's channel accepts
    assert seen == json.loads(
        json.dumps(
            {
                "frameworks": protocol.REPORTING_FRAMEWORKS,
                "scheme": protocol.AUTH_SCHEME,
                "hooked": protocol.HOOKED_MODULES,
            }
        )
    )
    assert channel.REPORTING_FRAMEWORKS == protocol.REPORTING_FRAMEWORKS
    assert channel.AUTH_SCHEME == protocol.AUTH_SCHEME

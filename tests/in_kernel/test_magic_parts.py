"""The magic's parts on their own: sizes, schema-made options, the client's secrecy, local NVML,
the provisioner's command line and the fail-soft loader."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import traceback

import pytest

from jupyter_tfgpu.in_kernel.client import NotConfigured, ServerClient, Unreachable
from jupyter_tfgpu.in_kernel.local import local_status
from jupyter_tfgpu.in_kernel.policy_fields import field_named, policy_fields, schema, setting_text
from jupyter_tfgpu.in_kernel.units import format_bytes, parse_mib
from jupyter_tfgpu.server.kernels.provisioner import MAGIC_EXTENSION, bootstrap_dir, is_ipykernel, with_magic
from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

SECRET = "kernel-token-that-must-never-show"


@pytest.mark.parametrize(
    "text,mib",
    [("4GiB", 4096), ("512MiB", 512), ("4G", 4096), ("4g", 4096), ("4 GB", 4096),
     ("2048", 2048), ("1.5GiB", 1536), ("1TiB", 1024**2), ("2048KiB", 2)],
)  # fmt: skip
def test_sizes_are_read_as_mib(text, mib):
    """Binary units, as docker and nvidia-smi count; a bare number is MiB."""
    assert parse_mib(text) == mib


@pytest.mark.parametrize("text", ["4XB", "", "GiB", "-1", "0", "100KiB"])
def test_bad_sizes_say_why(text):
    """Not a size, or less than 1 MiB: a ValueError that quotes the input."""
    with pytest.raises(ValueError, match=repr(text)):
        parse_mib(text)


def test_sizes_are_shown_readably():
    """Bytes as the largest fitting binary unit."""
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(None) == "–"


def test_device_values_read_as_a_person_writes_them():
    """A named mode reads as its name (not letter by letter), a list as a list."""
    devices = field_named("devices")
    assert devices.format("auto") == "auto"
    assert devices.format([0, 1]) == "0, 1"
    assert devices.format([]) == "CPU only"


def test_every_schema_field_has_an_option_and_parses():
    """The options come from the schema: each field, with its kind's parsing."""
    # Given the policy schema shipped in the package
    names = list(schema()["properties"])
    # Then every field has an option, and the friendlier names of the first four hold
    assert [f.name for f in policy_fields()] == names
    assert field_named("growth").name == "memory_growth"
    assert field_named("limit").parse("4GiB") == 4096
    assert field_named("devices").parse("0,1") == [0, 1]
    assert field_named("devices").parse("cpu") == []
    assert field_named("devices").parse("GPU-abc") == ["GPU-abc"]
    assert field_named("allocator").parse("async") == "cuda_malloc_async"
    assert field_named("limit").parse("none") is None
    with pytest.raises(ValueError, match="allocator"):
        field_named("allocator").parse("fast")


def test_a_field_added_to_the_schema_gets_an_option(monkeypatch):
    """A new boolean and a new integer field need no code in the magic."""
    # Given a schema with two more fields
    from jupyter_tfgpu.in_kernel import policy_fields as module

    added = {
        "flash_attention": {"type": ["boolean", "null"], "title": "Flash attention"},
        "workers": {"type": ["integer", "null"], "minimum": 1, "maximum": 8, "title": "Workers"},
    }
    extended = {**schema(), "properties": {**schema()["properties"], **added}}
    monkeypatch.setattr(module, "schema", lambda: extended)
    module.policy_fields.cache_clear()
    try:
        # Then they are fields with options and parsing
        assert field_named("flash-attention").kind == "bool"
        assert field_named("workers").parse("4") == 4
        with pytest.raises(ValueError, match="at most 8"):
            field_named("workers").parse("9")
    finally:
        module.policy_fields.cache_clear()


def test_the_client_never_shows_its_token():
    """Not in repr, not in pickles, not in the message or traceback of a failed request."""
    # Given a client for a server that is not there
    client = ServerClient("http://127.0.0.1:9/base/", SECRET, timeout=2)
    # Then it shows no token
    assert SECRET not in repr(client) + repr(vars(client)) + str(vars(client))
    with pytest.raises(TypeError):
        pickle.dumps(client)
    # And a failed request says where it looked, without the token or a chained cause
    with pytest.raises(Unreachable) as err:
        client.status()
    assert "http://127.0.0.1:9/base/ is not reachable" in str(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None
    shown = "".join(traceback.format_exception(err.value))
    assert SECRET not in shown


def test_no_server_environment_is_not_configured(monkeypatch):
    """Outside a jupyter-tfgpu kernel the client says so."""
    monkeypatch.delenv("TFGPU_SERVER_URL", raising=False)
    with pytest.raises(NotConfigured, match="policies need the server"):
        ServerClient.from_env()


def test_local_status_marks_this_process(monkeypatch):
    """Through NVML (the fake), this process's GPU memory is marked as this kernel's."""
    # Given NVML listing this process and another one on GPU 0
    fake = FakeNvml(gpus=[FakeGpu(memory_used=2**30, processes=[
        FakeProcess(os.getpid(), 256 * 2**20), FakeProcess(999_999, 512 * 2**20)])])  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    # When the magic reads the local GPUs
    status = local_status()
    # Then it has the GPU and tells this process apart
    assert status["available"] and status["local"]
    [gpu] = status["gpus"]
    assert gpu["name"] == "NVIDIA A100-SXM4-80GB"
    mine = {p["pid"]: p["mine"] for p in gpu["processes"]}
    assert mine == {os.getpid(): True, 999_999: False}


def test_no_nvml_library_is_said():
    """Without libnvidia-ml (this machine), the reason is NVML's own."""
    status = local_status()
    assert not status["available"]
    assert "NVML Shared Library Not Found" in status["reason"]


@pytest.mark.parametrize(
    "cmd,magic",
    [
        (["/env/bin/python", "-m", "ipykernel_launcher", "-f", "c.json"], True),
        (["python3", "-m", "ipykernel", "-f", "c.json"], True),
        (["/x/ipykernel_launcher.py", "-f", "c.json"], True),
        (["R", "--slave", "-e", "IRkernel::main()", "--args", "c.json"], False),
        (["julia", "-i", "kernel.jl", "c.json"], False),
    ],
)
def test_the_provisioner_adds_the_magic_to_ipykernels_only(cmd, magic):
    """ipykernel command lines load %tfgpu; other kernels' are left alone; adding is idempotent."""
    flag = f"--IPKernelApp.extra_extensions={MAGIC_EXTENSION}"
    assert is_ipykernel(cmd) is magic
    assert (flag in with_magic(cmd)) is magic
    assert with_magic(with_magic(cmd)) == with_magic(cmd)


def test_the_loader_fails_soft_without_the_package(monkeypatch, capsys):
    """In a kernel whose Python lacks jupyter_tfgpu, %tfgpu says how to install it."""
    # Given the loader from the bootstrap folder, in a Python where the package cannot be imported
    path = os.path.join(bootstrap_dir(), f"{MAGIC_EXTENSION}.py")
    spec = importlib.util.spec_from_file_location("tfgpu_magic_under_test", path)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    monkeypatch.setitem(sys.modules, "jupyter_tfgpu.in_kernel.magic", None)
    registered = {}

    class Shell:
        def register_magic_function(self, func, kind, name):
            registered[name] = (kind, func)

    # When IPython loads it
    loader.load_ipython_extension(Shell())
    # Then a stub %tfgpu is registered that explains, without a traceback
    kind, stub = registered["tfgpu"]
    assert kind == "line"
    stub("")
    assert (
        "needs the jupyter-tfgpu package in this kernel's Python environment"
        in capsys.readouterr().err
    )


def test_record_entries_read_in_the_fields_own_form():
    """A bootstrap record entry shows its value the way the field is written ("4 GiB", "on")."""
    assert setting_text({"setting": "memory_limit_mb", "value": 4096}) == "memory_limit_mb 4 GiB"
    assert setting_text({"setting": "memory_growth", "value": True}, "=") == "memory_growth=on"
    # an entry that is no policy field (e.g. "no policy set") keeps just its name
    assert setting_text({"setting": "policy", "value": None}) == "policy"


def test_the_help_starts_with_the_usage_line():
    """`%tfgpu --help` reads as plain text: no `::` left over from IPython's Sphinx markup."""
    # Given the magic's parser
    from jupyter_tfgpu.in_kernel.magic import TFGPUMagics

    # When its help is made, as `%tfgpu --help` prints it
    text = TFGPUMagics.tfgpu.parser.format_help()
    # Then it opens with the usage line and holds no RST literal-block marker
    assert text.startswith("usage: %tfgpu [-h]")
    assert "::" not in text.splitlines()

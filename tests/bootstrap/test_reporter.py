"""The kernel-side GPU memory reporter (bootstrap/tfgpu_report.py) in real Python subprocesses.

Each test starts ``sys.executable`` with the bootstrap folder on PYTHONPATH and the variables the
provisioner gives a kernel (TFGPU_POLICY, TFGPU_SERVER_URL, TFGPU_KERNEL_TOKEN), so the import
hook really starts the reporter. The server is a tiny local HTTP server that records what it is
sent. There is no GPU here: TensorFlow is the real CPU build, and "a framework that initialized a
GPU" is a stand-in package whose figures the test sets (torch, TensorFlow and JAX shapes).
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.bootstrap_helpers import HAS_TF, last_json, run_python

GIB = 2**30
TOKEN = "kernel-secret-" + os.urandom(12).hex()
INTERVAL = 0.1
class ReportServer:
    """A local stand-in for the server's report route: records each request, answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 204
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                capture.requests.append(
                    {
                        "at": time.time(),
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(body or b"null"),
                    }
                )
                self.send_response(capture.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/base/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server():
    """A report server on 127.0.0.1 that answers 204."""
    capture = ReportServer()
    yield capture
    capture.close()


@pytest.fixture
def closed_url():
    """The URL of a port nothing listens on: the server is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/base/"


def kernel_process(code, url, path=(), env=None, timeout=240):
    """Run ``code`` the way a kernel's Python process runs: bootstrap + the kernel channel."""
    channel = {
        "TFGPU_POLICY": "{}",
        "TFGPU_SERVER_URL": url,
        "TFGPU_KERNEL_TOKEN": TOKEN,
        "TFGPU_REPORT_INTERVAL": str(INTERVAL),
    }
    return run_python(code, path=path, env={**channel, **(env or {})}, timeout=timeout)


# Waits in the child until the reporter's status satisfies a condition (or 20 s pass).
WAIT_FOR = """
import time
import tfgpu_report

def wait_for(check, seconds=20):
    deadline = time.monotonic() + seconds
    while not check(tfgpu_report.status()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return tfgpu_report.status()
"""

# -- stand-in frameworks whose GPU figures the test controls ---------------------------------------

STAND_IN_TORCH_CUDA = """
# torch.cuda's side-effect-free queries; anything else before init() would initialize CUDA.
_initialized = False
touched_before_init = []
reserved = [3 * 2**30, 0]
allocated = [2 * 2**30, 0]
peak = [4 * 2**30, 0]

def _guard(name):
    if not _initialized:
        touched_before_init.append(name)

def is_initialized():
    return _initialized

def init():
    global _initialized
    _initialized = True

def device_count():
    _guard("device_count")
    return 2

def current_device():
    _guard("current_device")
    return 0

def memory_reserved(i):
    _guard("memory_reserved")
    return reserved[i]

def memory_allocated(i):
    _guard("memory_allocated")
    return allocated[i]

def max_memory_reserved(i):
    _guard("max_memory_reserved")
    return peak[i]

class _Props:
    def __init__(self, i):
        self.uuid = "5a1e0000-0000-0000-0000-00000000000%d" % i

def get_device_properties(i):
    _guard("get_device_properties")
    return _Props(i)
"""

STAND_IN_TF = {
    "tensorflow/__init__.py": "from . import config, python\n",
    "tensorflow/python/__init__.py": (
        "from .eager import context\nfrom .platform import build_info\n"
    ),
    "tensorflow/python/eager/__init__.py": "",
    "tensorflow/python/eager/context.py": textwrap.dedent(
        """
        _context = None  # TensorFlow's module global: the Context, once created

        class Context:
            _context_handle = None  # set when the context initializes its devices

        def initialize():
            global _context
            _context = Context()
            _context._context_handle = object()
        """
    ),
    "tensorflow/python/platform/__init__.py": "",
    "tensorflow/python/platform/build_info.py": "build_info = {'is_cuda_build': True}\n",
    "tensorflow/config/__init__.py": textwrap.dedent(
        """
        from . import experimental

        class LogicalDevice:
            def __init__(self, name):
                self.name = name

        def list_logical_devices(kind):
            return [LogicalDevice("/device:GPU:0"), LogicalDevice("/device:GPU:1")]
        """
    ),
    "tensorflow/config/experimental.py": textwrap.dedent(
        """
        figures = {"GPU:0": {"current": 5 * 2**30, "peak": 6 * 2**30},
                   "GPU:1": {"current": 0, "peak": 0}}

        def get_memory_info(device):
            return dict(figures[device])
        """
    ),
}

STAND_IN_JAX = {
    "jax/__init__.py": "from ._src import xla_bridge\n",
    "jax/_src/__init__.py": "",
    "jax/_src/xla_bridge.py": textwrap.dedent(
        """
        _backends = {}  # platform -> client, filled when JAX creates its backends

        class Device:
            def __init__(self, index, stats):
                self.local_hardware_id = index
                self._stats = stats

            def memory_stats(self):
                return self._stats

        class Client:
            def __init__(self, devices):
                self._devices = devices

            def local_devices(self):
                return self._devices

        def create_backends():
            _backends["cpu"] = Client([Device(None, None)])
            _backends["cuda"] = Client([
                Device(0, {"pool_bytes": 12 * 2**30, "bytes_in_use": 7 * 2**30,
                           "peak_bytes_in_use": 9 * 2**30}),
            ])
        """
    ),
}


def stand_in(root: Path, files: dict[str, str]) -> Path:
    """Write a stand-in package tree under ``root``; returns ``root`` for PYTHONPATH."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def torch_stand_in(tmp_path) -> Path:
    """A stand-in torch built for CUDA whose CUDA is initialized by ``torch.cuda.init()``."""
    return stand_in(
        tmp_path / "stand-ins",
        {
            "torch/__init__.py": "from . import cuda, version\n",
            "torch/version.py": "cuda = '12.4'\nhip = None\n",
            "torch/cuda.py": STAND_IN_TORCH_CUDA,
        },
    )


# -- when it starts --------------------------------------------------------------------------------


@pytest.mark.tensorflow
@pytest.mark.skipif(not HAS_TF, reason="needs the TensorFlow CPU build")
def test_tensorflow_without_a_gpu_never_starts_the_reporter(server):
    """Real TensorFlow (CPU build), imported and running ops: no thread, no report."""
    # Given a kernel process with the kernel channel set
    # When it imports TensorFlow, runs an op and goes on for many report intervals
    seen = last_json(
        kernel_process(
            """
            import json, threading, time
            import tensorflow as tf
            import tfgpu_bootstrap, tfgpu_report
            tf.reduce_sum(tf.constant([1.0, 2.0]) * 3).numpy()
            time.sleep(10 * %r)
            print(json.dumps({
                "status": tfgpu_report.status(),
                "found": tfgpu_report.collect(),
                "threads": [t.name for t in threading.enumerate()],
                "record": tfgpu_bootstrap.record(),
            }))
            """
            % INTERVAL,
            server.url,
        )
    )
    # Then the reporter never started, and says why
    assert server.requests == []
    assert "tfgpu-report" not in seen["threads"]
    assert seen["found"] == []
    assert seen["status"]["running"] is False
    assert seen["status"]["reason"] == "tensorflow is a CPU-only build"
    assert seen["status"]["watching"] == ["tensorflow"]
    assert seen["status"]["sent"] == 0
    assert seen["record"]["reporter"]["reason"] == "tensorflow is a CPU-only build"
    assert seen["record"]["errors"] == []


def test_reports_start_only_once_the_gpu_is_initialized(server, torch_stand_in):
    """A GPU build whose CUDA is not initialized: the thread watches quietly, sends nothing."""
    # Given torch built for CUDA, imported but with CUDA not initialized
    # When many intervals pass, then CUDA initializes
    seen = last_json(
        kernel_process(
            WAIT_FOR
            + """
import json, time, torch, tfgpu_report
time.sleep(10 * %r)
quiet = tfgpu_report.status()
init_at = time.time()
torch.cuda.init()
status = wait_for(lambda s: s["sent"] >= 2)
print(json.dumps({"quiet": quiet, "status": status, "init_at": init_at,
                  "touched": torch.cuda.touched_before_init}))
"""
            % INTERVAL,
            server.url,
            path=[torch_stand_in],
        )
    )
    # Then the thread was watching but neither sent nor touched CUDA before it was initialized
    assert seen["quiet"]["running"] is True
    assert seen["quiet"]["sent"] == 0 and seen["quiet"]["reporting"] == []
    assert seen["touched"] == []
    # And reports came only after, at the report interval
    assert len(server.requests) >= 2
    assert all(r["at"] >= seen["init_at"] for r in server.requests)
    assert seen["status"]["reporting"] == ["torch"]
    assert seen["status"]["last_status"] == 204


@pytest.mark.parametrize(
    "env,reason",
    [
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "CUDA_VISIBLE_DEVICES='-1' hides every GPU"),
        ({"TFGPU_KERNEL_TOKEN": None}, "TFGPU_SERVER_URL or TFGPU_KERNEL_TOKEN is not set"),
        ({"TFGPU_SERVER_URL": None}, "TFGPU_SERVER_URL or TFGPU_KERNEL_TOKEN is not set"),
    ],
    ids=["cpu-only-policy", "no-token", "no-server-url"],
)
def test_no_channel_or_no_visible_gpu_means_no_reporter(server, torch_stand_in, env, reason):
    """Hidden GPUs or a process outside a jupyter-tfgpu kernel: no thread even with CUDA up."""
    # Given a process whose GPUs are hidden, or which has no kernel channel
    # When torch initializes CUDA and time passes
    seen = last_json(
        kernel_process(
            """
            import json, time, torch, tfgpu_report
            torch.cuda.init()
            time.sleep(5 * %r)
            print(json.dumps(tfgpu_report.status()))
            """
            % INTERVAL,
            server.url,
            path=[torch_stand_in],
            env=env,
        )
    )
    # Then nothing was started or sent, and the status says why
    assert server.requests == []
    assert seen["running"] is False
    assert seen["reason"].startswith(reason)


# -- what it sends ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "visible,uuid",
    [
        (None, "GPU-5a1e0000-0000-0000-0000-000000000000"),
        ("GPU-aaaa,GPU-bbbb", "GPU-aaaa"),
        ("0,1", "GPU-5a1e0000-0000-0000-0000-000000000000"),
    ],
    ids=["torch-uuid", "provisioner-uuids", "indices-then-torch-uuid"],
)
def test_torch_reports_arrive_with_its_figures_and_the_kernel_token(
    server, torch_stand_in, visible, uuid
):
    """The report: POST {url}tfgpu/api/kernel/report, the kernel token, torch's own figures."""
    # Given a kernel process whose torch initialized CUDA (device 1 never used)
    # When the reporter has sent a few reports
    seen = last_json(
        kernel_process(
            WAIT_FOR
            + """
import json, os, torch, tfgpu_report
torch.cuda.init()
status = wait_for(lambda s: s["sent"] >= 3)
print(json.dumps({"status": status, "pid": os.getpid()}))
""",
            server.url,
            path=[torch_stand_in],
            env={"CUDA_VISIBLE_DEVICES": visible},
        )
    )
    # Then each one is the contract's JSON, with the kernel's token in the header
    assert len(server.requests) >= 3
    for request in server.requests:
        assert request["path"] == "/base/tfgpu/api/kernel/report"
        assert request["headers"]["Authorization"] == f"tfgpu-kernel {TOKEN}"
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["body"] == {
            "framework": "torch",
            "pid": seen["pid"],
            "devices": [{"uuid": uuid, "reserved": 3 * GIB, "in_use": 2 * GIB, "peak": 4 * GIB}],
        }
    stamps = [r["at"] for r in server.requests]
    assert min(b - a for a, b in zip(stamps, stamps[1:])) >= INTERVAL * 0.8
    assert seen["status"]["running"] is True
    assert seen["status"]["sent"] >= 3
    assert seen["status"]["last_status"] == 204


@pytest.mark.parametrize(
    "framework,files,initialize,devices",
    [
        (
            "tensorflow",
            STAND_IN_TF,
            "tensorflow.python.eager.context.initialize()",
            [
                {"uuid": "GPU-aaaa", "reserved": None, "in_use": 5 * GIB, "peak": 6 * GIB},
                {"uuid": "GPU-bbbb", "reserved": None, "in_use": 0, "peak": 0},
            ],
        ),
        (
            "jax",
            STAND_IN_JAX,
            "jax._src.xla_bridge.create_backends()",
            [{"uuid": "GPU-aaaa", "reserved": 12 * GIB, "in_use": 7 * GIB, "peak": 9 * GIB}],
        ),
    ],
    ids=["tensorflow", "jax"],
)
def test_tensorflow_and_jax_figures_once_their_gpu_backend_exists(
    server, tmp_path, framework, files, initialize, devices
):
    """TensorFlow after its context initialized, JAX after its GPU backend was created."""
    # Given a stand-in built for GPUs, imported, its GPU not initialized yet
    root = stand_in(tmp_path / "stand-ins", files)
    # When it initializes its GPU
    seen = last_json(
        kernel_process(
            WAIT_FOR
            + f"""
import json, time, {framework}, tfgpu_report
time.sleep(5 * {INTERVAL!r})
before = tfgpu_report.collect()
{initialize}
status = wait_for(lambda s: s["sent"] >= 1)
print(json.dumps({{"before": before, "status": status}}))
""",
            server.url,
            path=[root],
            env={"CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb"},
        )
    )
    # Then nothing was found before, and its own figures were reported after
    assert seen["before"] == []
    assert server.requests
    assert server.requests[0]["body"]["framework"] == framework
    assert server.requests[0]["body"]["devices"] == devices


def test_send_once_posts_one_report_and_returns_the_status(server):
    """send_once builds and posts one report at once, without any framework imported."""
    # Given a kernel process that imported no framework
    # When it sends one report by hand
    seen = last_json(
        kernel_process(
            """
            import json, tfgpu_bootstrap, tfgpu_report
            code = tfgpu_report.send_once("jax", [{"uuid": "GPU-1", "reserved": 5, "in_use": 3}])
            try:
                tfgpu_report.send_once("mxnet", [])
            except ValueError as exc:
                refused = str(exc)
            print(json.dumps({"code": code, "refused": refused, "status": tfgpu_report.status(),
                              "via_bootstrap": tfgpu_bootstrap.report_status()}))
            """,
            server.url,
        )
    )
    # Then exactly that report arrived, and the status counts it
    [request] = server.requests
    assert seen["code"] == 204
    assert request["body"]["devices"] == [
        {"uuid": "GPU-1", "reserved": 5, "in_use": 3, "peak": None}
    ]
    assert request["headers"]["Authorization"] == f"tfgpu-kernel {TOKEN}"
    assert "mxnet" in seen["refused"]
    assert seen["status"]["sent"] == 1 and seen["status"]["last_status"] == 204
    assert seen["status"]["running"] is False  # send_once starts no thread
    assert seen["via_bootstrap"] == seen["status"]


# -- when it stops, and what it never shows ------------------------------------------------------


def test_a_403_stops_the_reporter_for_good(server, torch_stand_in):
    """The server refuses the token (kernel restarted): one request, then the reporter stops."""
    # Given a server that refuses the token
    server.status = 403
    # When the reporter tries, and time goes on
    proc = kernel_process(
        WAIT_FOR
        + """
import json, time, torch, tfgpu_bootstrap, tfgpu_report
torch.cuda.init()
stopped = wait_for(lambda s: s["stopped"])
time.sleep(10 * %r)
print(json.dumps({"stopped": stopped, "later": tfgpu_report.status(),
                  "record": tfgpu_bootstrap.record()}))
"""
        % INTERVAL,
        server.url,
        path=[torch_stand_in],
    )
    seen = last_json(proc)
    # Then it sent once and never again
    assert len(server.requests) == 1
    assert seen["later"]["running"] is False
    assert seen["later"]["stopped"] is True
    assert seen["later"]["last_status"] == 403
    assert "HTTP 403" in seen["later"]["reason"]
    # And the record says so in one line, silently (nothing on stderr)
    [line] = [e["message"] for e in seen["record"]["errors"]]
    assert "403" in line and "stopped" in line
    assert "jupyter-tfgpu" not in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr


def test_a_429_slows_the_reporter_down_instead_of_stopping_it(server, torch_stand_in):
    """The server limits reports per kernel: the reporter backs off and keeps running."""
    # Given a server that answers every report with 429 Too Many Requests
    server.status = 429
    # When the reporter tries and gets that answer
    proc = kernel_process(
        WAIT_FOR
        + """
import json, torch, tfgpu_bootstrap, tfgpu_report
torch.cuda.init()
seen = wait_for(lambda s: s["retry_in"] is not None)
print(json.dumps({"seen": seen, "record": tfgpu_bootstrap.record()}))
""",
        server.url,
        path=[torch_stand_in],
    )
    seen = last_json(proc)["seen"]
    # Then it waits longer before the next try, and has not stopped
    assert seen["last_status"] == 429
    assert seen["retry_in"] > INTERVAL
    assert seen["stopped"] is False
    assert seen["running"] is True


def test_the_token_never_shows_when_the_server_is_down(closed_url, torch_stand_in, tmp_path):
    """Server down: backoff, one line in the record, and the token in no output or record."""
    # Given a kernel process whose server is not listening, writing its record for the server
    records = tmp_path / "records"
    # When the reporter tries for a while, and the user sends by hand and prints what they get
    proc = kernel_process(
        WAIT_FOR
        + """
import json, time, torch, tfgpu_bootstrap, tfgpu_report
torch.cuda.init()
status = wait_for(lambda s: s["failures"] >= 4)
try:
    tfgpu_report.send_once("torch", [{"uuid": "GPU-1", "reserved": 1}])
except ConnectionError as exc:
    import traceback
    traceback.print_exc()
    raised = repr(exc)
print(json.dumps({"status": status, "raised": raised, "record": tfgpu_bootstrap.record()}))
""",
        closed_url,
        path=[torch_stand_in],
        env={"TFGPU_RECORD_DIR": str(records)},
    )
    seen = last_json(proc)
    # Then it keeps trying, further and further apart
    status = seen["status"]
    assert status["running"] is True and status["sent"] == 0
    assert INTERVAL < status["retry_in"] <= 60
    assert "ConnectionRefusedError" in seen["raised"]
    # And the record has one line about it
    [line] = [e["message"] for e in seen["record"]["errors"]]
    assert "not reachable" in line
    # And the token is nowhere: stdout, stderr (a traceback included), the record file
    written = "".join(p.read_text() for p in records.iterdir())
    assert "not reachable" in written
    for text in (proc.stdout, proc.stderr, written, json.dumps(seen)):
        assert TOKEN not in text

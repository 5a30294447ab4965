"""GPUPanel and PolicyEditor in real kernels started by the real server, seen through comm messages.

A second kernel client records the kernel's iopub messages, as a front end receives them; edits
and clicks are sent as the front end sends them (comm messages on the shell channel).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
import time
from importlib.resources import files

import nbformat
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from tornado.httpclient import HTTPClientError

from jupyter_tfgpu.in_kernel.views import WARN
from jupyter_tfgpu.in_kernel.widgets import THREAD_PREFIX, GPUPanel, Poller, stop_all
from tests.kernel_helpers import start_session
from tests.notebooks.run import (
    IopubRecorder,
    code_cells,
    copy_notebook,
    execute,
    printed_json,
    run_notebook,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


async def open_notebook(jp_fetch, serverapp, root, name):
    """Copy a notebook into the server root and open it (a session); its kernel manager."""
    path = copy_notebook(root, name)
    session = await start_session(jp_fetch, path)
    km = serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
    return nbformat.read(root / path, as_version=4), km, session


async def test_gpu_panel_updates_through_comm_messages(jp_fetch, jp_serverapp, jp_root_dir):
    """The panel's thread pushes new state several times; close() stops it and closes the comms."""
    # Given a notebook that shows a GPUPanel, waits, and closes it
    nb, km, _ = await open_notebook(jp_fetch, jp_serverapp, jp_root_dir, "gpu_panel.ipynb")
    # When it runs while a front end listens
    async with IopubRecorder(km) as front_end:
        await execute(nb, km, allow_errors=False)
    created, _, closed = code_cells(nb)
    panel_id = printed_json(created)["panel"]
    # Then the panel's model got fresh snapshots at least twice, each with a new timestamp
    stamps = [state["timestamp"] for state in front_end.updates(panel_id) if "timestamp" in state]
    assert len(set(stamps)) >= 2
    assert stamps == sorted(stamps)
    # And the GPU rows' widgets were updated too (bars, memory, sparkline)
    updated_models = {
        m["content"]["comm_id"] for m in front_end.messages if m["msg_type"] == "comm_msg"
    }
    assert len(updated_models) >= 1 + 2 * 4  # the panel, and two GPUs of four parts each
    # And the panel was displayed as a widget view
    displayed = [o for o in nb.cells[1].outputs if WIDGET_VIEW in o.get("data", {})]
    assert displayed and displayed[0]["data"][WIDGET_VIEW]["model_id"] == panel_id
    # And after close() no thread is left and the comm is closed
    assert printed_json(closed) == {"updating": False, "threads": []}
    assert front_end.closed(panel_id)


async def test_watch_shows_a_live_panel(jp_fetch, jp_serverapp, jp_root_dir):
    """`%tfgpu watch` returns a GPUPanel, displayed as a widget."""
    # When the notebook runs %tfgpu watch
    nb, _ = await run_notebook(
        jp_fetch, jp_serverapp, jp_root_dir, "watch.ipynb", allow_errors=False
    )
    # Then a widget view is displayed and the panel was updating until closed
    assert any(WIDGET_VIEW in o.get("data", {}) for o in nb.cells[1].outputs)
    assert code_cells(nb)[1]["stdout"].strip() == "False"


async def test_policy_editor_saves_what_the_user_chose(jp_fetch, jp_serverapp, jp_root_dir):
    """Edits and a Save click, sent as comm messages, store the policy and apply it here."""
    # Given a notebook showing a PolicyEditor
    nb, km, _ = await open_notebook(jp_fetch, jp_serverapp, jp_root_dir, "policy_editor.ipynb")
    ids: dict[str, str] = {}

    async def user(index, cell):
        # When the user turns growth on, types a limit and clicks Save (after the first cell)
        if index != 1:
            return
        ids.update(printed_json(code_cells(nb)[0]))
        await front_end.send_comm(
            ids["growth"], {"method": "update", "state": {"index": 1}, "buffer_paths": []}
        )
        await front_end.send_comm(
            ids["limit"], {"method": "update", "state": {"value": "2GiB"}, "buffer_paths": []}
        )
        await front_end.send_comm(ids["save"], {"method": "custom", "content": {"event": "click"}})

    async with IopubRecorder(km) as front_end:
        await execute(nb, km, allow_errors=False, after_cell=user)
    _, after = code_cells(nb)
    # Then the notebook's policy is stored on the server
    stored = json.loads((await jp_fetch("tfgpu", "api", "policies")).body)["policies"]
    assert {k: v for k, v in stored["policy_editor.ipynb"].items() if v is not None} == {
        "memory_growth": True,
        "memory_limit_mb": 2048,
    }
    # And the editor said so, and applied it in this kernel (no framework imported yet)
    state = printed_json(after, 0)
    assert state["policy"] == {"memory_growth": True, "memory_limit_mb": 2048}
    assert state["message"].startswith("Saved. Applied in this kernel")
    assert state["restart_required"] is False
    messages = [s["message"] for s in front_end.updates(ids["editor"]) if "message" in s]
    assert messages and messages[-1] == state["message"]
    # And closing it left no thread
    assert printed_json(after) == {"updating": False, "threads": []}


async def test_policy_editor_follows_changes_saved_elsewhere(jp_fetch, jp_serverapp, jp_root_dir):
    """A change by REST shows in the form; with unsaved edits the form keeps them and says so."""
    # Given a notebook showing a PolicyEditor with no policy
    nb, km, _ = await open_notebook(jp_fetch, jp_serverapp, jp_root_dir, "policy_editor_live.ipynb")
    path = ("tfgpu", "api", "policies", "policy_editor_live.ipynb")

    async def elsewhere(index, cell):
        if index == 1:
            # When the policy is saved elsewhere while the form is untouched
            await jp_fetch(*path, method="PUT", body='{"memory_growth": true}')
        elif index == 2:
            # When the user types a limit, and the policy is saved elsewhere again
            limit = printed_json(code_cells(nb)[0])["limit"]
            await front_end.send_comm(limit, {"method": "update", "state": {"value": "3GiB"}, "buffer_paths": []})
            await jp_fetch(*path, method="PUT", body='{"memory_limit_mb": 1024}')

    async with IopubRecorder(km) as front_end:
        await execute(nb, km, allow_errors=False, after_cell=elsewhere)
    created, followed, noticed, reloaded = code_cells(nb)
    # Then the untouched form showed the saved policy
    assert printed_json(created)["policy"] == {}
    assert printed_json(followed) == {"followed": True, "policy": {"memory_growth": True}, "conflict": False}
    # And the edited form kept the user's edit and said the policy changed elsewhere
    assert printed_json(noticed) == {"noticed": True, "policy": {"memory_growth": True, "memory_limit_mb": 3072}}
    # And Reload showed the saved policy, dropping the edit
    assert printed_json(reloaded) == {"policy": {"memory_limit_mb": 1024}, "conflict": False}


async def test_the_panel_thread_stops_when_the_kernel_shuts_down(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """At kernel exit the panel's thread is stopped (atexit), before Python kills daemon threads."""
    # Given a kernel with an updating panel
    nb, _, session = await open_notebook(
        jp_fetch, jp_serverapp, jp_root_dir, "panel_shutdown.ipynb"
    )
    km = jp_serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
    await execute(nb, km, allow_errors=False)
    assert printed_json(code_cells(nb)[0]) is True
    # When the session is shut down through the REST API
    await jp_fetch("api", "sessions", session["id"], method="DELETE")
    # Then the kernel's last atexit handler found no panel thread alive
    report = jp_root_dir / "threads_at_exit.json"
    deadline = time.monotonic() + 20
    while not report.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert json.loads(report.read_text()) == []


# -- in this process, without a kernel ---------------------------------------------------------


class CountingSource:
    """A GPU source that makes up one changing GPU."""

    def __init__(self) -> None:
        self.calls = 0

    def status(self):
        self.calls += 1
        gpu = {
            "index": 0,
            "name": "Test GPU",
            "uuid": "GPU-test",
            "memory": {
                "total": 2**30,
                "used": self.calls * 2**20,
                "free": 2**30 - self.calls * 2**20,
            },
            "utilization": {"gpu": self.calls % 100, "memory": 0},
            "processes": [{"pid": 1, "used_memory": 2**20, "mine": True}],
        }
        return {"available": True, "timestamp": time.time(), "gpus": [gpu], "kernel": None}, None

    def history(self, seconds):
        return {"timestamps": [1.0, 2.0], "gpus": [{"index": 0, "utilization": [5.0, 7.0]}]}


def widget_threads() -> list[str]:
    """Names of the panels' update threads still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_panel_updates_and_stops_in_process():
    """The thread keeps the traits fresh; close() stops it and leaves no thread."""
    # Given a panel over a source that changes at every read
    source = CountingSource()
    panel = GPUPanel(interval=0.05, source=source)
    first = panel.timestamp
    # When some updates happened
    deadline = time.monotonic() + 5
    while source.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Then the state changed, with this kernel's share and the seeded history
    assert panel.timestamp > first and panel.updating
    row = panel.children[1]
    assert "this kernel 1.0 MiB" in row.memory.value
    assert "<polyline" in row.sparkline.value
    # And close() stops the thread
    panel.close()
    assert not panel.updating and widget_threads() == []


def test_stop_all_stops_every_poller():
    """What runs at kernel exit stops every update thread."""
    # Given two running pollers
    pollers = [Poller(lambda: None, 0.05, "test"), Poller(lambda: None, 0.05, "test")]
    for poller in pollers:
        poller.start()
    # When the kernel exits
    stop_all()
    # Then none is left
    assert not any(p.alive for p in pollers) and widget_threads() == []


# -- the kernel routes the panels read ----------------------------------------------------------


async def test_the_kernel_channel_serves_history_and_the_view_the_spec_documents(
    jp_fetch, jp_serverapp, jp_root_dir
):
    """kernel/history (sparklines) and kernel/policy (own, next_start) answer what the spec says,
    to the kernel's token only."""
    # Given a kernel of a notebook, and the token the provisioner gave it
    _, _, session = await open_notebook(jp_fetch, jp_serverapp, jp_root_dir, "status.ipynb")
    kernel_id = session["kernel"]["id"]
    token = jp_serverapp.web_app.settings["tfgpu_services"].tokens.issue(kernel_id)
    headers = {"Authorization": f"tfgpu-kernel {token}"}
    spec = OpenAPI.from_dict(
        yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
    )
    await asyncio.sleep(0.5)  # a few samples in the server's history
    for route, params in (("history", {"seconds": "30"}), ("policy", {}), ("status", {})):
        # When the kernel asks
        response = await jp_fetch("tfgpu", "api", "kernel", route, headers=headers, params=params)
        # Then the answer validates against the spec
        request = MockRequest("http://localhost", "get", f"/tfgpu/api/kernel/{route}", args=params)
        body = MockResponse(response.body, status_code=200, content_type="application/json")
        spec.validate_response(request, body)
        data = json.loads(response.body)
        if route == "history":
            assert len(data["timestamps"]) >= 2 and len(data["gpus"]) == 2
        else:
            view = data if route == "policy" else data["kernel"]
            assert view["own"] is None
            assert view["next_start"]["policy"]["notebook"] == "status.ipynb"
            assert "CUDA_VISIBLE_DEVICES" in view["next_start"]["env"]
    # And the user's own credentials do not open the kernel channel
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("tfgpu", "api", "kernel", "history")
    assert refused.value.code == 403


class FixedSource:
    """A GPU source that always answers the same kernel/status document."""

    def __init__(self, status):
        self._status = status

    def status(self):
        return self._status, None

    def history(self, seconds):
        return None


def kernel_status(gpu_memory, applied=None):
    """A kernel/status answer: one GPU, and this kernel with ``gpu_memory`` and ``applied``."""
    gpu = {
        "index": 0,
        "name": "Test GPU",
        "uuid": "GPU-test",
        "memory": {"total": 16 * 2**30, "used": 4 * 2**30, "free": 12 * 2**30},
        "utilization": {"gpu": 5, "memory": 0},
        "processes": [],
    }
    kernel = {"id": "k1", "notebook": "boxed.ipynb", "gpu_memory": gpu_memory, "applied": applied}
    return {"available": True, "timestamp": time.time(), "gpus": [gpu], "kernel": kernel}


def panel_text(panel):
    """The panel's header and first row as a reader sees them (tags dropped, entities read)."""
    parts = [panel._header.value, panel.children[1].memory.value]
    return html.unescape(re.sub(r"<[^>]+>", " ", " ".join(parts)))


def test_panel_says_when_this_kernels_figure_is_its_own_report():
    """As %tfgpu does: the row tags the figure, the header says what it is."""
    # Given this kernel's figure on GPU 0 is its frameworks' own report
    row = {"index": 0, "uuid": "GPU-test", "used_memory": 3 * 2**30, "source": "kernel_report",
           "pids": []}  # fmt: skip
    memory = {"total": 3 * 2**30, "source": "kernel_report", "unknown": None, "per_gpu": [row]}
    # When the panel shows it
    panel = GPUPanel(interval=60, source=FixedSource(kernel_status(memory)))
    try:
        said = panel_text(panel)
    finally:
        panel.close()
    # Then the row and the header say where the figure comes from
    assert "this kernel 3.0 GiB (own report)" in said
    assert "GPU memory on GPU 0 is its frameworks' own report" in said
    assert "leaves out the CUDA context" in said


def test_panel_warns_when_this_kernels_memory_is_unknown_or_its_cap_leaves_no_room():
    """The reason it is unknown, and the launch document's note on a cap below the context."""
    why = "GPU 0's process list could not be read (NVMLError_Timeout: Timeout)"
    note = (
        "memory_limit_mb 300 is at or below the 550 MiB this GPU needs for the CUDA context and "
        "libraries alone: any GPU use passes the cap"
    )
    memory = {"total": 0, "source": None, "unknown": why, "per_gpu": []}
    applied = {"memory_limit_mb": 300, "framework_limit_mb": 300, "memory_limit_note": note}
    panel = GPUPanel(interval=60, source=FixedSource(kernel_status(memory, applied)))
    try:
        header = panel._header.value
    finally:
        panel.close()
    said = html.unescape(header)
    assert f"This kernel's GPU memory is unknown right now: {why}." in said
    assert f"This kernel's cap: {note}." in said
    # Both as warnings
    assert header.count(WARN) == 2


def test_panel_says_nothing_more_for_nvmls_figure():
    """NVML's figure within a cap that leaves room: no note."""
    row = {"index": 0, "uuid": "GPU-test", "used_memory": 2**30, "source": "nvml", "pids": [1]}
    memory = {"total": 2**30, "source": "nvml", "unknown": None, "per_gpu": [row]}
    applied = {"memory_limit_mb": 4096, "framework_limit_mb": 3546, "context_reserve_mb": 550}
    panel = GPUPanel(interval=60, source=FixedSource(kernel_status(memory, applied)))
    try:
        said = panel_text(panel)
    finally:
        panel.close()
    assert "own report" not in said and "unknown" not in said and "cap:" not in said
    assert "this kernel 1.0 GiB" in said


def test_panel_says_what_the_cap_leaves_the_frameworks():
    """As %tfgpu and the lab do: the cap, what the frameworks get and the CUDA context's room."""
    # Given a kernel started with a cap, under a context reserve measured on its GPU
    row = {"index": 0, "uuid": "GPU-test", "used_memory": 2**30, "source": "nvml", "pids": [1]}
    memory = {"total": 2**30, "source": "nvml", "unknown": None, "per_gpu": [row]}
    applied = {"memory_limit_mb": 4096, "framework_limit_mb": 3584, "context_reserve_mb": 512,
               "context_reserve_source": "measured",
               "context_reserve_measured_on": "Test GPU, driver 580.159.04"}  # fmt: skip
    # When the panel shows it
    panel = GPUPanel(interval=60, source=FixedSource(kernel_status(memory, applied)))
    try:
        header = panel._header.value
    finally:
        panel.close()
    # Then the header says it, calmly
    said = html.unescape(header)
    assert (
        "This kernel runs with a cap of 4 GiB per GPU (frameworks get 3584 MiB; 512 MiB left for "
        "the CUDA context, measured on Test GPU, driver 580.159.04)." in said
    )
    assert WARN not in header

"""Who holds the GPU, end to end: real server, real kernels, fake NVML process lists.

NVML is the fake ``pynvml`` (tests/fake_pynvml.py); the processes it lists are real: a kernel's
child process (attributed by its PID), or a PID that matches nothing here, as NVML reports host
PIDs inside a container (attributed by what the kernel itself reported over the kernel channel).
The kernels talk to the server for real, over HTTP, with the token the provisioner gave them.
"""

from __future__ import annotations

import json
import textwrap

import psutil
import pytest
from tornado.httpclient import HTTPClientError

from tests.fake_pynvml import FakeGpu, FakeNvml, FakeProcess
from tests.kernel_helpers import kernel_headers, kernel_token, poll, run_code, run_json, start_session

GIB = 2**30
NOTEBOOK_A = "team/a.ipynb"
NOTEBOOK_B = "secret-project/b.ipynb"
SPAWN_CHILD = """
import json, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(json.dumps(child.pid))
"""


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """Two GPUs, no processes yet."""
    return FakeNvml(gpus=[FakeGpu(memory_used=GIB), FakeGpu(memory_used=GIB)])


@pytest.fixture
def tfgpu_config():
    """NVML over the fake; process lists read every 0.2 s."""
    return {"backend": "nvml", "sample_interval": 0.1, "process_interval": 0.2}


@pytest.fixture
def notebooks(jp_root_dir):
    """Two empty notebooks in different folders of the server root."""
    for path in (NOTEBOOK_A, NOTEBOOK_B):
        file = jp_root_dir / path
        file.parent.mkdir(parents=True, exist_ok=True)
        empty = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        file.write_text(json.dumps(empty))
    return NOTEBOOK_A, NOTEBOOK_B


async def get_json(jp_fetch, *parts: str, **kwargs):
    """GET a route under ``tfgpu/api/`` and decode its JSON body."""
    response = await jp_fetch("tfgpu", "api", *parts, **kwargs)
    return json.loads(response.body)


def unused_pid() -> int:
    """A PID no process here has: what NVML shows for a process in another PID namespace."""
    pid = 999_999
    while psutil.pid_exists(pid):
        pid += 1
    return pid


async def post_report(jp_fetch, token: str, report: dict) -> int:
    """POST kernel/report as a kernel would; returns the status (raises on 4xx/5xx)."""
    response = await jp_fetch(
        "tfgpu", "api", "kernel", "report",
        method="POST", body=json.dumps(report), headers=kernel_headers(token),
    )  # fmt: skip
    return response.code


async def refused(fetch) -> int:
    """The status of a request that must fail."""
    with pytest.raises(HTTPClientError) as err:
        await fetch
    return err.value.code


async def process_row(jp_fetch, gpu: int, pid: int, attributed: bool = True) -> dict | None:
    """The GET gpus row of ``pid`` on GPU ``gpu`` (once attributed, when ``attributed``)."""
    data = await get_json(jp_fetch, "gpus")
    rows = [p for p in data["gpus"][gpu]["processes"] if p["pid"] == pid]
    if rows and (rows[0]["kernel_id"] or not attributed):
        return rows[0]
    return None


async def test_a_kernel_child_process_is_attributed_by_pid(
    jp_fetch, jp_serverapp, fake_nvml, notebooks
):
    """NVML lists a kernel's child (``!python train.py``): its kernel and notebook, by PID."""
    # Given a notebook's kernel that started a child process
    session = await start_session(jp_fetch, NOTEBOOK_A)
    kernel_id = session["kernel"]["id"]
    child = await run_json(jp_serverapp, kernel_id, SPAWN_CHILD)
    try:
        # When NVML lists that child on GPU 1 with 5 GiB
        fake_nvml.gpus[1].processes.append(FakeProcess(pid=child, used_memory=5 * GIB))
        row = await poll(lambda: process_row(jp_fetch, 1, child), timeout=20)
        view = await get_json(jp_fetch, "kernels", kernel_id)
    finally:
        await run_code(jp_serverapp, kernel_id, "child.kill(); child.wait()")

    # Then GET gpus names the kernel and notebook, attributed by PID
    assert row["kernel_id"] == kernel_id
    assert row["notebook"] == NOTEBOOK_A
    assert row["attributed_by"] == "pid"
    assert row["used_memory"] == 5 * GIB
    # And GET kernels/{id} counts it, from NVML
    assert view["gpu_memory"] == {
        "total": 5 * GIB,
        "source": "nvml",
        "unknown": None,
        "per_gpu": [
            {
                "index": 1,
                "uuid": fake_nvml.gpus[1].uuid,
                "used_memory": 5 * GIB,
                "source": "nvml",
                "pids": [child],
            }
        ],
    }


@pytest.mark.parametrize("named_by", ["uuid", "index"])
async def test_container_pids_are_attributed_by_the_kernels_own_report(
    jp_fetch, jp_serverapp, fake_nvml, notebooks, named_by
):
    """NVML lists a PID that matches nothing; the kernel reports 3 GiB there: that is its own.

    A reporter names the GPU by UUID where it knows one, else by index (TensorFlow without
    CUDA_VISIBLE_DEVICES): both lead to the same GPU.
    """
    # Given NVML showing an unknown PID holding 3 GiB on GPU 0, and a running kernel
    stranger = unused_pid()
    gpu0 = fake_nvml.gpus[0].uuid
    name = gpu0 if named_by == "uuid" else "0"
    fake_nvml.gpus[0].processes.append(FakeProcess(pid=stranger, used_memory=3 * GIB))
    session = await start_session(jp_fetch, NOTEBOOK_A)
    kernel_id = session["kernel"]["id"]
    before = await poll(lambda: process_row(jp_fetch, 0, stranger, attributed=False), timeout=20)
    assert before["kernel_id"] is None and before["attributed_by"] is None

    # When the kernel reports its framework's figures over its own channel, with its own token
    out = await run_code(
        jp_serverapp,
        kernel_id,
        textwrap.dedent(
            f"""
            import tfgpu_report
            device = {{"uuid": {name!r}, "reserved": 3 * 2**30, "in_use": 2 * 2**30}}
            print(tfgpu_report.send_once("torch", [device]))
            """
        ),
    )
    row = await poll(lambda: process_row(jp_fetch, 0, stranger), timeout=20)
    view = await get_json(jp_fetch, "kernels", kernel_id)

    # Then the server stored it, and GET gpus gives the process to that kernel by its report
    assert out.strip() == "204"
    assert row["kernel_id"] == kernel_id
    assert row["notebook"] == NOTEBOOK_A
    assert row["attributed_by"] == "kernel_report"
    # And GET kernels/{id} shows the reported figure, saying where it comes from
    assert view["gpu_memory"] == {
        "total": 3 * GIB,
        "source": "kernel_report",
        "unknown": None,
        "per_gpu": [
            {
                "index": 0,
                "uuid": gpu0,
                "used_memory": 3 * GIB,
                "source": "kernel_report",
                "pids": [],
            }
        ],
    }


async def test_two_processes_of_one_kernel_report_side_by_side(
    jp_fetch, jp_serverapp, fake_nvml, notebooks
):
    """The kernel and its ``!python train.py`` both use torch: their reports add up."""
    # Given a kernel
    gpu0 = fake_nvml.gpus[0].uuid
    session = await start_session(jp_fetch, NOTEBOOK_A)
    kernel_id = session["kernel"]["id"]

    # When the kernel reports 1 GiB and a child Python process (same env) reports 2 GiB
    codes = await run_json(
        jp_serverapp,
        kernel_id,
        textwrap.dedent(
            f"""
            import json, subprocess, sys, tfgpu_report
            send = "import tfgpu_report; print(tfgpu_report.send_once('torch', %r))"
            mine = tfgpu_report.send_once("torch", [{{"uuid": {gpu0!r}, "reserved": 2**30}}])
            child = subprocess.run(
                [sys.executable, "-c", send % [{{"uuid": {gpu0!r}, "reserved": 2 * 2**30}}]],
                capture_output=True, text=True, check=True,
            )
            print(json.dumps([mine, int(child.stdout)]))
            """
        ),
    )

    async def both_counted():
        view = await get_json(jp_fetch, "kernels", kernel_id)
        return view if view["gpu_memory"]["total"] == 3 * GIB else None

    view = await poll(both_counted, timeout=20)

    # Then neither overwrote the other
    assert codes == [204, 204]
    [row] = view["gpu_memory"]["per_gpu"]
    assert row["source"] == "kernel_report" and row["used_memory"] == 3 * GIB


async def test_the_kernels_own_reporter_reports_by_itself(
    jp_fetch, jp_serverapp, fake_nvml, notebooks, jp_root_dir, monkeypatch
):
    """No send_once: the bootstrap's reporter thread sends once the framework's GPU is up."""
    # Given a kernel started with a short report interval, and a stand-in torch built for CUDA
    # that names fake GPU 0 by its UUID (there is no GPU here to initialize)
    monkeypatch.setenv("TFGPU_REPORT_INTERVAL", "0.2")
    stand_in = jp_root_dir / "stand-ins" / "torch"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("from . import cuda, version\n")
    (stand_in / "version.py").write_text("cuda = '12.4'\n")
    uuid = fake_nvml.gpus[0].uuid.removeprefix("GPU-")
    (stand_in / "cuda.py").write_text(
        textwrap.dedent(
            f"""
            _up = False
            def is_initialized(): return _up
            def init():
                global _up
                _up = True
            def device_count(): return 1
            def current_device(): return 0
            def memory_reserved(i): return 6 * 2**30
            def memory_allocated(i): return 4 * 2**30
            def max_memory_reserved(i): return 6 * 2**30
            class _Props:
                uuid = {uuid!r}
            def get_device_properties(i): return _Props()
            """
        )
    )
    stranger = unused_pid()
    fake_nvml.gpus[0].processes.append(FakeProcess(pid=stranger, used_memory=6 * GIB))
    session = await start_session(jp_fetch, NOTEBOOK_A)
    kernel_id = session["kernel"]["id"]

    # When the notebook imports torch and CUDA initializes
    await run_code(
        jp_serverapp,
        kernel_id,
        f"import sys; sys.path.insert(0, {str(stand_in.parent)!r})\n"
        "import torch; torch.cuda.init()",
    )
    row = await poll(lambda: process_row(jp_fetch, 0, stranger), timeout=20)
    status = await run_json(
        jp_serverapp,
        kernel_id,
        "import json, tfgpu_bootstrap; print(json.dumps(tfgpu_bootstrap.report_status()))",
    )

    # Then the process is the kernel's by its report, and the kernel's reporter counts its sends
    assert row["kernel_id"] == kernel_id
    assert row["attributed_by"] == "kernel_report"
    assert status["running"] is True
    assert status["sent"] >= 1 and status["last_status"] == 204
    assert status["reporting"] == ["torch"]


# -- the kernel channel's boundaries ---------------------------------------------------------------


async def test_kernel_tokens_open_only_the_kernel_routes(jp_fetch, jp_serverapp, notebooks):
    """A kernel token is no user token, and a wrong token opens no kernel route."""
    # Given a kernel and its token
    session = await start_session(jp_fetch, NOTEBOOK_A)
    token = await kernel_token(jp_serverapp, session["kernel"]["id"])
    mine = kernel_headers(token)
    wrong = kernel_headers("not-" + token)

    # When the kernel token is used on user routes, Then they refuse it
    for parts in (("tfgpu", "api", "policies"), ("tfgpu", "api", "gpus"), ("api", "kernels")):
        assert await refused(jp_fetch(*parts, headers=dict(mine))) == 403, parts
    # When a wrong token (or the user's own token) is used on kernel routes, Then they refuse it
    report = json.dumps({"framework": "torch", "pid": 1, "devices": []})
    for headers in (wrong, {}):
        for route in ("status", "policy"):
            fetch = jp_fetch("tfgpu", "api", "kernel", route, headers=dict(headers))
            assert await refused(fetch) == 403, (route, headers)
        assert (
            await refused(
                jp_fetch(
                    "tfgpu", "api", "kernel", "report",
                    method="POST", body=report, headers=dict(headers),
                )  # fmt: skip
            )
            == 403
        )
    # And the right token opens them
    status = await get_json(jp_fetch, "kernel", "status", headers=dict(mine))
    assert status["kernel"]["id"] == session["kernel"]["id"]


async def test_kernel_status_does_not_reveal_other_notebooks(
    jp_fetch, jp_serverapp, fake_nvml, notebooks
):
    """Kernel A sees that someone holds GPU 0, not that it is kernel B of secret-project."""
    # Given two notebooks' kernels, B's process holding 7 GiB of GPU 0
    a = (await start_session(jp_fetch, NOTEBOOK_A))["kernel"]["id"]
    b = (await start_session(jp_fetch, NOTEBOOK_B))["kernel"]["id"]
    b_pid = jp_serverapp.kernel_manager.get_kernel(b).provisioner.pid
    fake_nvml.gpus[0].processes.append(FakeProcess(pid=b_pid, used_memory=7 * GIB))
    user_row = await poll(lambda: process_row(jp_fetch, 0, b_pid), timeout=20)
    assert user_row["notebook"] == NOTEBOOK_B  # the user's view names it
    token_a = await kernel_token(jp_serverapp, a)
    token_b = await kernel_token(jp_serverapp, b)

    # When kernel A and kernel B ask for kernel/status
    response = await jp_fetch("tfgpu", "api", "kernel", "status", headers=kernel_headers(token_a))
    seen_by_b = await get_json(jp_fetch, "kernel", "status", headers=kernel_headers(token_b))

    # Then A sees the memory but neither B's notebook nor B's kernel id, anywhere
    text = response.body.decode()
    assert NOTEBOOK_B not in text and "secret-project" not in text
    assert b not in text
    seen_by_a = json.loads(text)
    [row] = seen_by_a["gpus"][0]["processes"]
    assert row["used_memory"] == 7 * GIB
    assert (row["kernel_id"], row["notebook"], row["mine"]) == (None, None, False)
    assert seen_by_a["kernel"]["id"] == a and seen_by_a["kernel"]["notebook"] == NOTEBOOK_A
    # And B sees its own process as its own
    [own] = seen_by_b["gpus"][0]["processes"]
    assert (own["kernel_id"], own["notebook"], own["mine"]) == (b, NOTEBOOK_B, True)


async def test_a_restart_revokes_the_old_token_and_its_reports(
    jp_fetch, jp_serverapp, fake_nvml, notebooks
):
    """After a restart the previous token is refused, and what it reported is forgotten."""
    # Given a kernel that reported 2 GiB on GPU 0 with its token
    gpu0 = fake_nvml.gpus[0].uuid
    kernel_id = (await start_session(jp_fetch, NOTEBOOK_A))["kernel"]["id"]
    old = await kernel_token(jp_serverapp, kernel_id)
    report = {"framework": "tensorflow", "pid": 1, "devices": [{"uuid": gpu0, "in_use": 2 * GIB}]}
    assert await post_report(jp_fetch, old, report) == 204
    view = await get_json(jp_fetch, "kernels", kernel_id)
    assert view["gpu_memory"]["total"] == 2 * GIB

    # When the kernel restarts
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    new = await kernel_token(jp_serverapp, kernel_id)

    # Then the old token is refused and the new one works
    assert new != old
    fetch = jp_fetch("tfgpu", "api", "kernel", "status", headers=kernel_headers(old))
    assert await refused(fetch) == 403
    assert await refused(
        jp_fetch(
            "tfgpu", "api", "kernel", "report",
            method="POST", body=json.dumps(report), headers=kernel_headers(old),
        )  # fmt: skip
    ) == 403

    # And the previous process's report no longer counts for the restarted kernel
    async def forgotten():
        view = await get_json(jp_fetch, "kernels", kernel_id)
        return view if view["gpu_memory"]["per_gpu"] == [] else None

    await poll(forgotten, timeout=20)
    assert await post_report(jp_fetch, new, report) == 204


async def test_a_kernel_pid_without_an_nvml_figure_falls_back_to_its_report(
    jp_fetch, jp_serverapp, fake_nvml, notebooks
):
    """NVML lists the kernel's own PID but gives no memory figure (N/A): its report counts."""
    # Given a kernel whose process NVML lists on GPU 0 with no figure
    gpu0 = fake_nvml.gpus[0].uuid
    kernel_id = (await start_session(jp_fetch, NOTEBOOK_A))["kernel"]["id"]
    pid = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    fake_nvml.gpus[0].processes.append(FakeProcess(pid=pid, used_memory=None))
    await poll(lambda: process_row(jp_fetch, 0, pid), timeout=20)

    # When the kernel reports 3 GiB reserved on GPU 0
    token = await kernel_token(jp_serverapp, kernel_id)
    report = {"framework": "torch", "pid": pid, "devices": [{"uuid": gpu0, "reserved": 3 * GIB}]}
    assert await post_report(jp_fetch, token, report) == 204
    view = await get_json(jp_fetch, "kernels", kernel_id)

    # Then its GPU memory is the reported figure, saying so, with NVML's PID still listed
    assert view["gpu_memory"] == {
        "total": 3 * GIB,
        "source": "kernel_report",
        "unknown": None,
        "per_gpu": [
            {
                "index": 0,
                "uuid": gpu0,
                "used_memory": 3 * GIB,
                "source": "kernel_report",
                "pids": [pid],
            }
        ],
    }

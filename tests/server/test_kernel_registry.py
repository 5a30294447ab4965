"""The kernel registry on the event loop: process-table and record reads in threads, and a
kernel that stops while its view is being made is a 404, never a 500.

Real server, real kernels. The race is made deterministic: a test hook holds one await of the
request open (the session list, or the kernel's record read) while the kernel is shut down.
"""

from __future__ import annotations

import asyncio
import json
import threading

import psutil

from tornado.httpclient import HTTPClientError

from jupyter_tfgpu.server.api.handlers import SERVICES_KEY
from tests.kernel_helpers import poll, start_session


def registry(jp_serverapp):
    """The server's kernel registry."""
    return jp_serverapp.web_app.settings[SERVICES_KEY].kernels


async def fetch_status(fetch) -> tuple[int, dict]:
    """The status and JSON body of a request, error or not."""
    try:
        response = await fetch
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return response.code, json.loads(response.body)


async def test_a_kernel_that_stops_during_the_refresh_is_a_404(jp_fetch, jp_serverapp):
    """GET kernels/{id}: the kernel is shut down while the request waits on the session list."""
    # Given a running kernel, and a session list that waits until the test lets it go
    kernel_id = (await start_session(jp_fetch, "gone.ipynb"))["kernel"]["id"]
    sessions = jp_serverapp.session_manager
    list_sessions = sessions.list_sessions
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_list_sessions():
        entered.set()
        await release.wait()
        return await list_sessions()

    sessions.list_sessions = held_list_sessions
    try:
        # When GET kernels/{id} is inside its refresh and the kernel stops meanwhile
        request = asyncio.ensure_future(
            fetch_status(jp_fetch("tfgpu", "api", "kernels", kernel_id))
        )
        await asyncio.wait_for(entered.wait(), 30)
        await jp_serverapp.kernel_manager.shutdown_kernel(kernel_id)
        release.set()
        code, body = await asyncio.wait_for(request, 30)
    finally:
        sessions.list_sessions = list_sessions
        release.set()

    # Then the answer is a JSON 404 that names the kernel, not a 500
    assert code == 404
    assert kernel_id in body["message"] and body["reason"] == "no such kernel"


async def test_a_kernel_that_stops_during_its_record_read_is_a_404(jp_fetch, jp_serverapp):
    """GET kernels/{id}: the kernel is shut down while its record file is read in a thread."""
    # Given a running kernel whose record read (in a worker thread) waits for the test
    kernel_id = (await start_session(jp_fetch, "slow-record.ipynb"))["kernel"]["id"]
    kernels = registry(jp_serverapp)
    read = kernels.record
    entered, release = threading.Event(), threading.Event()

    def held_record(kernel, pid):
        entered.set()
        release.wait(30)
        return read(kernel, pid)

    kernels.record = held_record
    try:
        # When the kernel stops while GET kernels/{id} reads its record
        request = asyncio.ensure_future(
            fetch_status(jp_fetch("tfgpu", "api", "kernels", kernel_id))
        )
        await poll(lambda: asyncio.sleep(0, entered.is_set()), timeout=30)
        await jp_serverapp.kernel_manager.shutdown_kernel(kernel_id)
        release.set()
        code, body = await asyncio.wait_for(request, 30)
    finally:
        kernels.record = read
        release.set()

    # Then it is a 404, as for any kernel that is not running
    assert code == 404
    assert body["reason"] == "no such kernel"


async def test_process_start_times_are_read_off_the_event_loop(
    jp_fetch, jp_serverapp, monkeypatch
):
    """Refreshing after a kernel starts reads its process's start time in a worker thread."""
    # Given a spy on every start-time read from the process table
    threads = []
    create_time = psutil.Process.create_time

    def spy(process):
        threads.append(threading.current_thread() is threading.main_thread())
        return create_time(process)

    monkeypatch.setattr(psutil.Process, "create_time", spy)
    # When a kernel starts and GET kernels refreshes the registry
    kernel_id = (await start_session(jp_fetch, "threads.ipynb"))["kernel"]["id"]
    kernels = json.loads((await jp_fetch("tfgpu", "api", "kernels")).body)["kernels"]

    # Then its process was read, and never on the event loop's (main) thread
    assert kernel_id in [k["id"] for k in kernels]
    assert threads and not any(threads)
    assert kernel_id in {k.kernel_id for k in registry(jp_serverapp).attribution.kernels}


async def test_refreshes_that_overlap_run_one_after_the_other(jp_serverapp):
    """Callers during a refresh share the next one; no two run at once, each sees a new one."""
    # Given a registry whose refresh counts how many run at once
    kernels = registry(jp_serverapp)
    at_once, most, runs = 0, 0, 0
    real = kernels._refresh

    async def counted():
        nonlocal at_once, most, runs
        at_once += 1
        most = max(most, at_once)
        runs += 1
        try:
            await asyncio.sleep(0.01)
            await real()
        finally:
            at_once -= 1

    kernels._refresh = counted
    # When ten callers refresh at once
    await asyncio.gather(*(kernels.refresh() for _ in range(10)))

    # Then one ran, and one more for those that came while it ran; never two at once
    assert (runs, most) == (2, 1)


async def test_the_kernels_list_leaves_out_a_kernel_that_stopped(jp_fetch, jp_serverapp):
    """GET kernels made while a kernel stops lists the others, and never answers 500."""
    # Given two kernels, one stopping while the records are read
    keep = (await start_session(jp_fetch, "keep.ipynb"))["kernel"]["id"]
    stop = (await start_session(jp_fetch, "stop.ipynb"))["kernel"]["id"]
    kernels = registry(jp_serverapp)
    read = kernels.record
    entered, release = threading.Event(), threading.Event()

    def held_record(kernel, pid):
        entered.set()
        release.wait(30)
        return read(kernel, pid)

    kernels.record = held_record
    try:
        request = asyncio.ensure_future(fetch_status(jp_fetch("tfgpu", "api", "kernels")))
        await poll(lambda: asyncio.sleep(0, entered.is_set()), timeout=30)
        await jp_serverapp.kernel_manager.shutdown_kernel(stop)
        release.set()
        code, body = await asyncio.wait_for(request, 30)
    finally:
        kernels.record = read
        release.set()

    # Then the list has the running kernel only
    assert code == 200
    assert [k["id"] for k in body["kernels"]] == [keep]

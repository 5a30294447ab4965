"""A hostile kernel on the kernel channel: what it sends is bounded, and others are not hurt.

Real server, real kernels; NVML is the fake ``pynvml`` with no kernel PIDs in its process lists,
as inside a container, so what kernels report over their channel is what counts.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from jupyter_tfgpu.server.kernels.channel import MAX_BODY_BYTES, MAX_REPORTERS, REPORT_BURST, REPORT_WINDOW
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.kernel_helpers import kernel_headers, kernel_token, poll, run_code, start_session

GIB = 2**30


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """Two GPUs whose process lists name no kernel's PID."""
    return FakeNvml(gpus=[FakeGpu(memory_used=GIB), FakeGpu(memory_used=GIB)])


@pytest.fixture
def tfgpu_config():
    """NVML over the fake; a 300 MiB cap enforced in warn mode, at once."""
    return {
        "backend": "nvml",
        "sample_interval": 0.1,
        "process_interval": 0.2,
        "max_memory_mb": 300,
        "enforcement": "warn",
        "enforcement_grace": 0.0,
    }


@pytest.fixture
def tfgpu(jp_serverapp):
    """The extension's services in the running server."""
    return jp_serverapp.web_app.settings["tfgpu_services"]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def kernel_with_token(jp_fetch, jp_serverapp, notebook: str) -> tuple[str, str]:
    """Start a notebook's kernel; its id and the token the provisioner gave it."""
    kernel_id = (await start_session(jp_fetch, notebook))["kernel"]["id"]
    return kernel_id, await kernel_token(jp_serverapp, kernel_id)


async def send(jp_fetch, token: str, route: str = "report", body: str = "", **headers: str):
    """POST (with a body) or GET a kernel route with a kernel token; the response, never raising."""
    response = await jp_fetch(
        "tfgpu", "api", "kernel", route,
        method="POST" if body else "GET",
        body=body or None,
        headers={**kernel_headers(token), **headers},
        raise_error=False,
    )  # fmt: skip
    return response


def report(uuid: str, reserved: int, pid: int = 4242) -> str:
    """A report's JSON, as a kernel's reporter sends it."""
    device = {"uuid": uuid, "reserved": reserved}
    return json.dumps({"framework": "torch", "pid": pid, "devices": [device]})


def error_of(response) -> dict:
    """The JSON error body."""
    return json.loads(response.body)


# -- item 1: one report must not switch enforcement off or break /metrics ------------------------


async def test_a_huge_figure_is_refused_and_others_are_still_enforced(
    jp_fetch, jp_serverapp, fake_nvml, tfgpu
):
    """A kernel reporting 10**400 bytes gets a 400; another kernel over its cap is still warned
    about, and /metrics still answers."""
    # Given two kernels and a listener for enforcement events
    from jupyter_tfgpu.server.services import ENFORCEMENT_EVENT

    events = []

    async def listener(logger, schema_id, data):
        events.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=ENFORCEMENT_EVENT, listener=listener)
    gpu0 = fake_nvml.gpus[0].uuid
    _, hostile = await kernel_with_token(jp_fetch, jp_serverapp, "hostile.ipynb")
    victim_id, victim = await kernel_with_token(jp_fetch, jp_serverapp, "victim.ipynb")

    # When the hostile kernel reports an absurd figure, and the other one reports 2 GiB
    absurd = await send(jp_fetch, hostile, body=report(gpu0, 10**400))
    honest = await send(jp_fetch, victim, body=report(gpu0, 2 * GIB))

    # Then the absurd figure is refused, naming the field
    assert absurd.code == 400
    assert "devices[0].reserved" in error_of(absurd)["message"]
    assert error_of(absurd)["reason"] == "invalid devices[0].reserved"
    assert honest.code == 204
    # And the kernel over its 300 MiB cap is still warned about
    async def victim_warned():
        return [e for e in events if e["kernel_id"] == victim_id]

    warned = await poll(victim_warned)
    assert warned[0]["rule"] == "memory_cap" and warned[0]["action"] == "warn"
    # And /metrics answers, with the honest kernel's figure
    metrics = await jp_fetch("metrics")
    line = next(
        line for line in metrics.body.decode().splitlines()
        if line.startswith("tfgpu_kernel_gpu_memory_bytes{") and victim_id in line
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) == 2 * GIB


OUT_OF_BOUNDS = [
    ("devices[0].in_use", {"uuid": "GPU-0", "in_use": 2**50 + 1}, 1),
    ("devices[0].reserved", {"uuid": "GPU-0", "reserved": -1}, 1),
    ("devices[0].peak", {"uuid": "GPU-0", "peak": 1.5}, 1),
    ("devices[0].uuid", {"uuid": "G" * 129}, 1),
    ("devices[0].uuid", {"uuid": ""}, 1),
    ("pid", {"uuid": "GPU-0"}, 0),
    ("pid", {"uuid": "GPU-0"}, 2**63),
    ("pid", {"uuid": "GPU-0"}, "1"),
    ("pid", {"uuid": "GPU-0"}, True),
]


async def test_reports_out_of_bounds_are_refused_naming_the_field(jp_fetch, jp_serverapp, tfgpu):
    """Byte counts past 1 PiB, negative ones, bad UUIDs and impossible PIDs answer 400."""
    # Given a kernel
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "a.ipynb")
    for field, device, pid in OUT_OF_BOUNDS:
        # When it reports an out-of-bounds value
        body = json.dumps({"framework": "jax", "pid": pid, "devices": [device]})
        response = await send(jp_fetch, token, body=body)
        # Then it is refused, naming the field
        assert response.code == 400, (field, device, pid)
        assert error_of(response)["message"].startswith(f"{field}: "), error_of(response)
    # And a body nested too deep to parse is a 400 too, not a server error
    assert (await send(jp_fetch, token, body="[" * 50_000)).code == 400
    # And nothing was stored
    assert tfgpu.reports.count(kernel_id) == 0


# -- item 2: a flood of reports stays bounded ------------------------------------------------------


async def test_a_flood_of_distinct_reports_is_kept_bounded(
    jp_fetch, jp_serverapp, fake_nvml, tfgpu
):
    """Reports from ever new PIDs with long UUIDs: the kernel's entries stop growing at the cap."""
    # Given a kernel, and a rate limiter whose clock moves only when the test says
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "flood.ipynb")
    clock = FakeClock()
    tfgpu.reports.limiter.clock = clock

    # When it sends three times the cap of reports, each from another PID, slowly enough
    uuid = "GPU-" + "f" * 124
    codes = set()
    for pid in range(1, 3 * MAX_REPORTERS + 1):
        clock.now += REPORT_WINDOW  # the limiter is not what this test is about
        codes.add((await send(jp_fetch, token, body=report(uuid, GIB, pid=pid))).code)

    # Then each was accepted, but only the newest MAX_REPORTERS are kept
    assert codes == {204}
    assert tfgpu.reports.count(kernel_id) == MAX_REPORTERS


async def test_a_body_over_the_limit_is_refused_unread(jp_fetch, jp_serverapp, fake_nvml, tfgpu):
    """A report body over 64 KiB answers 413, naming the body, and stores nothing."""
    # Given a kernel
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "big.ipynb")
    # When it sends an otherwise valid report padded past the limit
    padded = json.loads(report(fake_nvml.gpus[0].uuid, GIB))
    padded["padding"] = "x" * MAX_BODY_BYTES
    response = await send(jp_fetch, token, body=json.dumps(padded))
    # Then it is refused
    assert response.code == 413
    assert error_of(response)["message"].startswith("body: ")
    assert error_of(response)["reason"] == "body too large"
    assert tfgpu.reports.count(kernel_id) == 0


async def test_a_body_announced_too_large_is_refused_before_it_is_sent(
    jp_fetch, jp_serverapp, jp_http_port, jp_base_url
):
    """A kernel announcing 60 MB gets 413 at once: the server answers on the headers alone,
    instead of buffering the body (up to the server-wide 512 MiB) to refuse it afterwards."""
    # Given a kernel
    _, token = await kernel_with_token(jp_fetch, jp_serverapp, "huge.ipynb")
    # When it sends the headers of a 60 MB report and only the first byte of the body
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    head = (
        f"POST {jp_base_url}tfgpu/api/kernel/report HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{jp_http_port}\r\n"
        f"Authorization: tfgpu-kernel {token}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {60 * 2**20}\r\n\r\n{{"
    )
    writer.write(head.encode())
    await writer.drain()
    # Then the answer is a 413, without the rest of the body ever being sent
    try:
        status = await asyncio.wait_for(reader.readline(), timeout=30)
    finally:
        writer.close()
    assert status.split()[1] == b"413"


async def test_reports_past_the_rate_answer_429_until_the_bucket_refills(
    jp_fetch, jp_serverapp, fake_nvml, tfgpu
):
    """A kernel may send REPORT_BURST reports at once; the next is refused until time passes."""
    # Given a kernel and a frozen clock for the rate limiter
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "rate.ipynb")
    clock = FakeClock()
    tfgpu.reports.limiter.clock = clock
    body = report(fake_nvml.gpus[0].uuid, GIB)

    # When it sends a burst, then one more
    burst = {(await send(jp_fetch, token, body=body)).code for _ in range(REPORT_BURST)}
    over = await send(jp_fetch, token, body=body)
    # And, once the window has passed, another one
    clock.now += REPORT_WINDOW
    later = await send(jp_fetch, token, body=body)

    # Then the burst is accepted, the one past it is refused with 429, and later ones pass again
    assert burst == {204}
    assert over.code == 429 and error_of(over)["reason"] == "too many reports"
    assert later.code == 204
    # And another kernel's rate is its own
    _, other = await kernel_with_token(jp_fetch, jp_serverapp, "other.ipynb")
    assert (await send(jp_fetch, other, body=body)).code == 204


# -- item 3: the kernel's record file --------------------------------------------------------------

WRITE_RECORD = """
import json, os
path = os.path.join(os.environ["TFGPU_RECORD_DIR"], f"{os.getpid()}.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    f.write(%s)
print(json.dumps(os.path.getsize(path)))
"""


BAD_RECORDS = [
    ('json.dumps({"pid": 1, "padding": "x" * 300 * 1024})', "over the limit of 262144"),
    ("json.dumps([1, 2, 3])", "does not hold a JSON object"),
    ('json.dumps({"frameworks": "everything"})', "'frameworks' has the wrong type"),
    ('"[" * 100_000', "not valid JSON"),
]


async def test_a_bad_record_file_is_reported_as_an_error(jp_fetch, jp_serverapp, fake_nvml):
    """A record file that is too large or not a record is not used: the API says why."""
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "record.ipynb")
    for content, error in BAD_RECORDS:
        # Given a kernel that overwrote its bootstrap's record file
        await run_code(jp_serverapp, kernel_id, WRITE_RECORD % content)

        # When its view is asked for, by the user and by the kernel itself
        view = json.loads((await jp_fetch("tfgpu", "api", "kernels", kernel_id)).body)
        own = json.loads((await send(jp_fetch, token, route="policy")).body)

        # Then the record is shown as an error saying why, and the rest of the view is there
        assert view["framework"] == {"error": view["framework"]["error"]}
        assert error in view["framework"]["error"], view["framework"]
        assert view["id"] == kernel_id and view["notebook"] == "record.ipynb"
        assert own["framework"] == view["framework"]


# -- item 5: the kernel channel runs jupyter_server's request checks ---------------------------


async def test_kernel_routes_keep_jupyter_servers_request_checks(
    jp_fetch, jp_serverapp, fake_nvml
):
    """A foreign Host header (DNS rebinding) or a cross-site Origin is refused on kernel routes
    too, even with a valid kernel token."""
    # Given a kernel's valid token
    _, token = await kernel_with_token(jp_fetch, jp_serverapp, "checks.ipynb")
    assert (await send(jp_fetch, token, route="status")).code == 200
    # When it is used with a foreign Host, or from a foreign Origin
    foreign_host = await send(jp_fetch, token, route="status", Host="evil.example.com")
    foreign_origin = await send(jp_fetch, token, route="status", Origin="http://evil.example.com")
    # Then jupyter_server's own checks refuse them, as on every other route
    assert foreign_host.code == 403
    assert foreign_origin.code == 404


# -- item 6: state of kernels that are gone is pruned ------------------------------------------


async def test_state_of_failed_and_vanished_kernels_is_pruned(
    jp_fetch, jp_serverapp, jp_kernel_dir, tfgpu
):
    """A kernel whose start failed leaves a token and a policy document; a kernel that vanished
    leaves a record folder and reports. The periodic refresh forgets them, and keeps live ones."""
    # Given a running kernel, and a kernelspec whose program does not exist
    live_id, live_token = await kernel_with_token(jp_fetch, jp_serverapp, "live.ipynb")
    spec = jp_kernel_dir / "broken"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["/nonexistent/python", "-f", "{connection_file}"],
                "display_name": "Broken",
                "language": "python",
            }
        )
    )
    registry = tfgpu.kernels
    # When a kernel of that spec fails to start
    failed = await jp_fetch(
        "api", "kernels", method="POST", body=json.dumps({"name": "broken"}), raise_error=False
    )
    assert failed.code >= 500
    # And a kernel vanished without a shutdown event, leaving its record folder and reports
    vanished = "0f0f0f0f-dead-4bad-8bad-000000000000"
    os.makedirs(os.path.join(registry.record_root, vanished))
    tfgpu.reports.put(vanished, json.loads(report("GPU-0", GIB)))
    held = tfgpu.tokens.kernel_ids() | tfgpu.kernels.launches.kernel_ids() | tfgpu.reports.kernel_ids()
    strays = held - {live_id}
    assert len(strays) >= 2  # the failed start's token and document, and the vanished one

    # When the registry refreshes, as it does periodically
    try:
        await registry.refresh_and_prune()
    finally:
        # jupyter_client keeps a failed start among its pending kernels, and its shutdown_all
        # (the fixture's teardown) then fails on it; not this extension's to change.
        pending = jp_serverapp.kernel_manager._pending_kernels
        for kernel_id in strays & set(pending):
            pending.pop(kernel_id)

    # Then nothing is kept for them, and the live kernel keeps its token and document
    assert tfgpu.tokens.kernel_ids() == {live_id}
    assert tfgpu.kernels.launches.kernel_ids() == {live_id}
    assert tfgpu.reports.kernel_ids() <= {live_id}
    assert vanished not in os.listdir(registry.record_root)
    assert (await send(jp_fetch, live_token, route="status")).code == 200



# -- item 1, defence in depth: /metrics survives a bad row ------------------------------------------


def test_metrics_leave_out_a_kernel_whose_row_is_bad_and_say_so_once(caplog):
    """A figure a float cannot hold drops that kernel's gauge, not the whole scrape."""
    from jupyter_tfgpu.server.metrics import SnapshotCollector

    # Given one kernel row with an absurd figure and one sound row
    def row(kernel_id, used):
        gpu = {"index": 0, "uuid": "GPU-0", "used_memory": used, "source": "kernel_report"}
        return {"kernel_id": kernel_id, "notebook": None, "total": used, "per_gpu": [gpu]}

    collector = SnapshotCollector(
        snapshot=lambda: (),
        kernel_rows=lambda: [row("bad", 10**400), row("good", GIB)],
        sampler_stats=dict,
    )
    # When it is scraped twice
    for _ in range(2):
        families = {f.name: f for f in collector.collect()}
    # Then the sound kernel's gauge is there, the bad one is left out, and logged once
    samples = families["tfgpu_kernel_gpu_memory_bytes"].samples
    assert [(s.labels["kernel_id"], s.value) for s in samples] == [("good", GIB)]
    assert sum("kernel bad left out" in r.getMessage() for r in caplog.records) == 1


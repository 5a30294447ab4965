"""The GPU REST and websocket contract, through a real jupyter_server with a fake pynvml."""

from __future__ import annotations

import asyncio
import json
import time

import pynvml
import pytest
from tornado.httpclient import HTTPClientError

from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.kernel_helpers import poll

GIB = 2**30
NO_CREDENTIALS = {"Authorization": ""}  # overrides the token jp_fetch and jp_ws_fetch would add
INTERVAL = 0.1


def eight_gpus() -> FakeNvml:
    """Eight healthy GPUs with distinct, recognisable readings."""
    return FakeNvml(
        gpus=[
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                memory_used=(i + 1) * GIB,
                util_gpu=10 + i,
                temperature=40 + i,
                power_draw_mw=200_000 + i * 1000,
                pcie_tx_kb=1000 + i,
                pcie_rx_kb=2000 + i,
            )
            for i in range(8)
        ]
    )


@pytest.fixture
def fake_nvml() -> FakeNvml:
    """The NVML library the server sees; parametrize ``fake_nvml`` to change it."""
    return eight_gpus()


@pytest.fixture
def tfgpu_config():
    """NVML over the fake, sampled fast; parametrize ``tfgpu_config`` to change it."""
    return {"backend": "nvml", "sample_interval": INTERVAL, "history_seconds": 60}


@pytest.fixture
def sampler(jp_serverapp):
    """The server's one sampler."""
    return jp_serverapp.web_app.settings["tfgpu_services"].sampler


async def get_json(jp_fetch, *parts: str, **kwargs):
    """GET a route under ``tfgpu/api/`` and decode its JSON body."""
    response = await jp_fetch("tfgpu", "api", *parts, **kwargs)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)




async def read_snapshot(ws, timeout: float = 10.0) -> dict:
    """The next snapshot the websocket pushes."""
    message = await asyncio.wait_for(ws.read_message(), timeout)
    assert message is not None, "the server closed the websocket"
    return json.loads(message)


# -- authentication and routing ----------------------------------------------------------------

REST_ROUTES = [("status",), ("gpus",), ("gpus", "history")]


@pytest.mark.parametrize("parts", REST_ROUTES, ids="/".join)
async def test_rest_endpoints_refuse_requests_without_credentials(jp_fetch, parts):
    """No token, no cookie: 403, never data."""
    # Given a request without credentials
    # When
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch(
            "tfgpu", "api", *parts, headers=dict(NO_CREDENTIALS), params={"seconds": "10"}
        )

    # Then
    assert err.value.code == 403
    assert b"H100" not in (err.value.response.body or b"")


async def test_stream_refuses_websocket_without_credentials(jp_ws_fetch):
    """The websocket upgrade is refused without credentials."""
    # Given / When
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("tfgpu", "api", "stream", headers=dict(NO_CREDENTIALS))

    # Then
    assert err.value.code == 403


@pytest.mark.parametrize("path", ["tfgpu/api/status", "tfgpu/api/gpus", "tfgpu/api/stream"])
async def test_routes_honour_the_base_url(http_server_client, jp_auth_header, jp_base_url, path):
    """With credentials the routes answer under base_url and not at the server root."""
    # Given a non-root base_url
    assert jp_base_url == "/shared-gpu/"

    # When the same path is asked for at the root
    with pytest.raises(HTTPClientError) as err:
        await http_server_client.fetch(f"/{path}", headers=jp_auth_header)

    # Then it is not found there
    assert err.value.code == 404
    if not path.endswith("stream"):
        ok = await http_server_client.fetch(f"{jp_base_url}{path}", headers=jp_auth_header)
        assert ok.code == 200


# -- backends ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tfgpu_config", [{"backend": "auto", "sample_interval": INTERVAL}], ids=["auto"]
)
@pytest.mark.parametrize(
    "fake_nvml",
    [FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)],
    ids=["no-library"],
)
async def test_auto_without_the_library_says_why(jp_fetch):
    """backend=auto on a host without libnvidia-ml: available false, the reason, no rows."""
    # Given a server whose NVML library is missing
    # When
    status = await get_json(jp_fetch, "status")
    gpus = await get_json(jp_fetch, "gpus")

    # Then
    assert status["available"] is False
    assert status["reason"] == "NVML Shared Library Not Found"
    assert status["backend"] == "none"
    assert status["configured_backend"] == "auto"
    assert status["device_count"] == 0
    assert gpus["gpus"] == []
    assert gpus["simulated"] is False


@pytest.mark.parametrize(
    "tfgpu_config", [{"backend": "none", "sample_interval": INTERVAL}], ids=["none"]
)
async def test_backend_none_turns_monitoring_off(jp_fetch, installed_nvml):
    """backend=none: available false with a reason, no rows, and NVML never touched."""
    # Given a server with monitoring off
    # When
    status = await get_json(jp_fetch, "status")
    gpus = await get_json(jp_fetch, "gpus")
    history = await get_json(jp_fetch, "gpus", "history", params={"seconds": "30"})

    # Then
    assert status["backend"] == "none"
    assert status["available"] is False
    assert "none" in status["reason"]
    assert gpus["gpus"] == []
    assert history["gpus"] == []
    assert sum(installed_nvml.calls.values()) == 0


@pytest.mark.parametrize(
    "tfgpu_config",
    [{"backend": "simulated", "sample_interval": INTERVAL}],
    ids=["simulated"],
)
async def test_simulated_backend_serves_labelled_gpus(jp_fetch, installed_nvml):
    """backend=simulated serves GPUs labelled simulated, without touching NVML."""
    # Given a server with the default two simulated GPUs
    # When
    status = await get_json(jp_fetch, "status")

    async def sampled():
        data = await get_json(jp_fetch, "gpus")
        return data if data["timestamp"] is not None else None

    gpus = await poll(sampled)

    # Then
    assert status["backend"] == "simulated"
    assert status["available"] is True
    assert status["simulated"] is True
    assert gpus["simulated"] is True
    assert [g["index"] for g in gpus["gpus"]] == [0, 1]
    assert all(g["memory"]["total"] == 16 * GIB for g in gpus["gpus"])
    assert sum(installed_nvml.calls.values()) == 0


async def test_eight_nvml_gpus_are_eight_rows(jp_fetch, fake_nvml):
    """Eight GPUs through NVML: status counts them, gpus serves eight rows in contract units."""
    # Given a server over eight fake GPUs
    # When
    status = await get_json(jp_fetch, "status")

    async def sampled():
        data = await get_json(jp_fetch, "gpus")
        return data if data["timestamp"] is not None else None

    gpus = await poll(sampled)

    # Then
    assert status["backend"] == "nvml"
    assert status["available"] is True
    assert status["device_count"] == 8
    assert status["sample_interval"] == INTERVAL
    assert status["versions"]["driver"] == fake_nvml.driver_version
    assert status["versions"]["cuda"] == "12.4"
    rows = gpus["gpus"]
    assert gpus["simulated"] is False
    assert len(rows) == 8
    assert [r["index"] for r in rows] == list(range(8))
    assert [r["uuid"] for r in rows] == [g.uuid for g in fake_nvml.gpus]
    for i, row in enumerate(rows):
        assert row["lost"] is False
        assert row["name"] == "NVIDIA H100 80GB HBM3"
        assert row["memory"]["total"] == 80 * GIB
        assert row["memory"]["used"] == (i + 1) * GIB
        assert row["utilization"]["gpu"] == 10 + i
        assert row["temperature"] == 40 + i
        assert row["power"]["draw"] == 200.0 + i
        assert row["fan"] is None  # SXM board: NotSupported
        assert row["pcie"] == {"tx": None, "rx": None}  # nobody asked for PCIe
        assert isinstance(row["processes"], list)


async def test_gpu_lost_mid_run_is_a_lost_row(jp_fetch, fake_nvml, sampler):
    """A GPU that falls off the bus becomes a lost row; the server and the others go on."""
    # Given a server that has sampled its eight GPUs
    await poll(lambda: _rounds_at_least(sampler, 2))

    # When GPU 5 falls off the bus
    fake_nvml.gpus[5].lost = True

    async def lost_row():
        data = await get_json(jp_fetch, "gpus")
        return data if data["gpus"][5]["lost"] else None

    gpus = await poll(lost_row)

    # Then only that row says so, and sampling carries on for the others
    assert [r["lost"] for r in gpus["gpus"]] == [i == 5 for i in range(8)]
    assert gpus["gpus"][5]["lost_reason"]
    fake_nvml.gpus[0].util_gpu = 99

    async def fresh():
        data = await get_json(jp_fetch, "gpus")
        return data["gpus"][0]["utilization"]["gpu"] == 99

    await poll(fresh)
    status = await get_json(jp_fetch, "status")
    assert status["available"] is True
    assert status["device_count"] == 8


async def _rounds_at_least(sampler, rounds: int) -> bool:
    """Whether the sampler has taken ``rounds`` rounds."""
    return sampler.rounds >= rounds


# -- history ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["abc", "-5", "nan"])
async def test_history_rejects_a_bad_seconds(jp_fetch, bad):
    """?seconds=abc (or a non-positive number) is a 400 whose JSON message names seconds."""
    # Given / When
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("tfgpu", "api", "gpus", "history", params={"seconds": bad})

    # Then
    assert err.value.code == 400
    body = json.loads(err.value.response.body)
    assert "seconds" in body["message"]


async def test_history_grows_over_time(jp_fetch):
    """The server's history gains samples as rounds go by, one series per GPU."""
    # Given a server sampling eight GPUs
    async def history():
        return await get_json(jp_fetch, "gpus", "history", params={"seconds": "60"})

    first = await poll(lambda: _with_samples(history, 2))

    # When time passes
    later = await poll(lambda: _with_samples(history, len(first["timestamps"]) + 3))

    # Then the series are longer, in time order, and aligned with the timestamps
    assert len(later["timestamps"]) > len(first["timestamps"])
    assert later["timestamps"] == sorted(later["timestamps"])
    assert later["timestamps"][: len(first["timestamps"])] == first["timestamps"]
    assert len(later["gpus"]) == 8
    for i, series in enumerate(later["gpus"]):
        assert series["index"] == i
        assert len(series["utilization"]) == len(later["timestamps"])
        assert series["memory_used"][-1] == (i + 1) * GIB
    assert later["interval"] == INTERVAL


async def _with_samples(history, count: int):
    """The history when it holds at least ``count`` samples, else None."""
    data = await history()
    return data if len(data["timestamps"]) >= count else None


# -- websocket -------------------------------------------------------------------------------------


async def test_stream_pushes_snapshots_in_order(jp_ws_fetch):
    """The stream pushes the latest snapshot at once, then each new one as it is taken."""
    # Given a websocket client
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        # When it listens for a while
        snapshots = [await read_snapshot(ws) for _ in range(5)]
    finally:
        ws.close()

    # Then it got at least three sampled snapshots, in time order, each with all GPUs
    stamps = [s["timestamp"] for s in snapshots if s["timestamp"] is not None]
    assert len(stamps) >= 3
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert all(len(s["gpus"]) == 8 for s in snapshots if s["timestamp"] is not None)


async def test_stream_pcie_request_turns_pcie_figures_on(jp_ws_fetch, fake_nvml):
    """``{"pcie": true}`` over the socket makes PCIe figures appear; false turns them off."""
    # Given a client whose snapshots carry no PCIe figures
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        first = await read_snapshot(ws)
        assert all(g["pcie"] == {"tx": None, "rx": None} for g in first["gpus"])

        # When it asks for them
        await ws.write_message(json.dumps({"pcie": True}))

        # Then later snapshots carry them, in bytes/s
        snapshot = await _next_matching(ws, lambda s: s["gpus"][0]["pcie"]["tx"] is not None)
        assert [g["pcie"]["tx"] for g in snapshot["gpus"]] == [(1000 + i) * 1024 for i in range(8)]
        assert [g["pcie"]["rx"] for g in snapshot["gpus"]] == [(2000 + i) * 1024 for i in range(8)]
        assert fake_nvml.calls["nvmlDeviceGetPcieThroughput"] > 0

        # And when it no longer wants them, they go away again
        await ws.write_message(json.dumps({"pcie": False}))
        await _next_matching(ws, lambda s: s["gpus"][0]["pcie"]["tx"] is None)
    finally:
        ws.close()


async def _next_matching(ws, predicate, timeout: float = 10.0) -> dict:
    """Read snapshots until one satisfies ``predicate``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = await read_snapshot(ws, timeout=max(deadline - time.monotonic(), 0.01))
        if predicate(snapshot):
            return snapshot
    pytest.fail("no matching snapshot within the time allowed")


async def test_rest_pcie_request_turns_pcie_figures_on(jp_fetch, fake_nvml):
    """``GET gpus?pcie=true`` turns PCIe sampling on; later answers carry the figures."""
    # Given a server where nobody watched PCIe
    gpus = await get_json(jp_fetch, "gpus")
    assert all(g["pcie"] == {"tx": None, "rx": None} for g in gpus["gpus"])
    assert fake_nvml.calls["nvmlDeviceGetPcieThroughput"] == 0

    # When a client asks for PCIe
    async def with_pcie():
        data = await get_json(jp_fetch, "gpus", params={"pcie": "true"})
        return data if data["gpus"][0]["pcie"]["tx"] is not None else None

    gpus = await poll(with_pcie)

    # Then
    assert [g["pcie"]["tx"] for g in gpus["gpus"]] == [(1000 + i) * 1024 for i in range(8)]
    assert [g["pcie"]["rx"] for g in gpus["gpus"]] == [(2000 + i) * 1024 for i in range(8)]


@pytest.mark.parametrize(
    "tfgpu_config",
    [
        {
            "backend": "nvml",
            "sample_interval": INTERVAL,
            # Slow fields and process lists once, at the first round: every later round reads
            # the same fast fields, so its NVML call count is a constant.
            "slow_interval": 3600.0,
            "process_interval": 3600.0,
        }
    ],
    ids=["fast-only"],
)
async def test_nvml_calls_per_round_do_not_grow_with_clients(jp_ws_fetch, fake_nvml, sampler):
    """Ten websocket clients cost NVML exactly what one does: one sampler serves them all."""
    # Given a record, taken in the sampler's own thread at the end of each round, of the
    # total NVML calls so far
    record: list[tuple[int, int]] = []
    sampler.annotators.append(
        lambda data: record.append((sampler.rounds, sum(fake_nvml.calls.values())))
    )

    def per_round(since: int) -> set[int]:
        rows = record[since:]
        return {b[1] - a[1] for a, b in zip(rows, rows[1:])}

    async def rounds_recorded(count: int) -> bool:
        return len(record) >= count

    clients = [await jp_ws_fetch("tfgpu", "api", "stream")]
    try:
        await poll(lambda: rounds_recorded(2))  # past the first round's slow fields
        one_from = len(record)
        await poll(lambda: rounds_recorded(one_from + 6))
        with_one = per_round(one_from)

        # When nine more clients listen
        clients += [await jp_ws_fetch("tfgpu", "api", "stream") for _ in range(9)]
        ten_from = len(record)
        await poll(lambda: rounds_recorded(ten_from + 6))
        with_ten = per_round(ten_from)

        # Then each of them is served ...
        for ws in clients:
            assert len((await read_snapshot(ws))["gpus"]) == 8
    finally:
        for ws in clients:
            ws.close()

    # ... and every round made the same number of NVML calls with ten clients as with one
    assert len(with_one) == 1
    assert with_ten == with_one
    assert with_one == {16}  # eight GPUs x (memory info + utilization rates)

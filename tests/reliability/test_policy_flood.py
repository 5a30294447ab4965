"""A kernel that floods its channel: every request counts against a budget, and open views get
the latest policy revision a few times a second, not every revision.

Real server, real kernels; the rate limiters' and the stream's clocks are injected, so nothing
here depends on how fast the machine runs the requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib.resources import files

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from jupyter_tfgpu.policy.changes import PolicyChanges
from jupyter_tfgpu.server.stream import PUSH_INTERVAL, StreamMessages
from jupyter_tfgpu.server.kernels.channel import CHANNEL_LIMITS
from tests.kernel_helpers import kernel_headers, kernel_token, poll, run_json, start_session

SPEC = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())


@pytest.fixture
def tfgpu_config():
    """Snapshots 30 s apart: any stream message within a test is a pushed policy change."""
    return {"backend": "simulated", "sample_interval": 30, "history_seconds": 60}


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


class LogLines(logging.Handler):
    """Keeps the messages logged to the server's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class FakeTimers:
    """``call_later`` that only records; the test fires what it scheduled."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback) -> None:
        self.scheduled.append((delay, callback))

    def fire(self) -> None:
        due, self.scheduled = self.scheduled, []
        for _, callback in due:
            callback()


async def kernel_with_token(jp_fetch, jp_serverapp, notebook: str) -> tuple[str, str]:
    """Start a notebook's kernel; its id and its kernel-channel token."""
    kernel_id = (await start_session(jp_fetch, notebook))["kernel"]["id"]
    return kernel_id, await kernel_token(jp_serverapp, kernel_id)


async def call(jp_fetch, token: str, method: str, route: str, body: object = None, **params):
    """One kernel-channel request with the kernel's token; the response, never raising."""
    return await jp_fetch(
        "tfgpu", "api", "kernel", route,
        method=method,
        params=params,
        body=None if body is None else json.dumps(body),
        headers=kernel_headers(token),
        raise_error=False,
        allow_nonstandard_methods=True,
    )  # fmt: skip


# -- every kernel-channel request has a budget -----------------------------------------------------

REQUESTS = [
    # (what a kernel loops on, the budget it spends)
    (("PUT", "policy", {"memory_growth": True}, {}), "policy"),
    (("DELETE", "policy", None, {}), "policy"),
    (("POST", "applied", {}, {}), "applied"),
    (("GET", "policy", None, {}), "read"),
    (("GET", "status", None, {}), "read"),
    (("GET", "history", None, {"seconds": 5}), "read"),
]


async def test_each_kind_of_kernel_request_has_a_budget_and_a_429_says_when_to_retry(
    jp_fetch, jp_serverapp, tfgpu
):
    """A kernel looping on any kernel-channel route gets 429 once that route's budget is spent,
    naming the budget, with Retry-After; the budget refills with time. Each refusal is logged
    once, by the access log."""
    # Given a notebook's kernel, and rate limiters whose clock moves only when the test says
    _, token = await kernel_with_token(jp_fetch, jp_serverapp, "flood.ipynb")
    clock = FakeClock()
    tfgpu.reports.limiter.clock = clock
    log = LogLines()
    jp_serverapp.log.addHandler(log)
    for (method, route, body, params), kind in REQUESTS:
        limit = CHANNEL_LIMITS[kind]
        clock.now += limit.window  # each kind starts with a full bucket
        # When the kernel sends its whole budget and one more, at the same instant
        codes = [
            (await call(jp_fetch, token, method, route, body, **params)).code
            for _ in range(limit.burst)
        ]
        over = await call(jp_fetch, token, method, route, body, **params)
        # Then the budget is served and the one past it is refused, naming the budget
        assert 429 not in codes, (method, route, codes)
        assert over.code == 429, (method, route)
        error = json.loads(over.body)
        assert error["reason"] == f"too many {limit.what}"
        assert limit.describe() in error["message"]
        # And it says when one request fits again, as the spec documents
        retry_after = int(over.headers["Retry-After"])
        assert 1 <= retry_after <= limit.window
        documented = SPEC["paths"][f"/kernel/{route}"][method.lower()]["responses"]["429"]
        assert documented == {"$ref": "#/components/responses/TooManyRequests"}
        request = MockRequest("http://localhost", method.lower(), f"/tfgpu/api/kernel/{route}", args=params)
        response = MockResponse(over.body, status_code=429, content_type="application/json", headers=dict(over.headers))
        OpenAPI.from_dict(SPEC).validate_response(request, response)
        clock.now += retry_after
        assert (await call(jp_fetch, token, method, route, body, **params)).code != 429
    # And each refusal was logged once: the access log's line, no "wrote error" besides
    jp_serverapp.log.removeHandler(log)
    refusals = [line for line in log.lines if line.startswith("429 ")]
    assert len(refusals) == len(REQUESTS), log.lines
    assert not [line for line in log.lines if "too many" in line], log.lines


async def test_a_policy_write_loop_writes_the_store_at_most_its_budget(
    jp_fetch, jp_serverapp, tfgpu
):
    """Three times the budget of PUT kernel/policy at once: the store is written (and the change
    numbered) only for the budget's worth; reads still answer."""
    # Given a kernel and a frozen clock for its budgets
    _, token = await kernel_with_token(jp_fetch, jp_serverapp, "loop.ipynb")
    tfgpu.reports.limiter.clock = FakeClock()
    before = tfgpu.policies.changes.revision
    burst = CHANNEL_LIMITS["policy"].burst

    # When it loops on PUT kernel/policy, changing the limit each time
    codes = [
        (await call(jp_fetch, token, "PUT", "policy", {"memory_limit_mb": 1024 + n})).code
        for n in range(3 * burst)
    ]

    # Then only the budget's writes were made, the rest refused
    assert codes.count(200) == burst and codes.count(429) == 2 * burst
    assert tfgpu.policies.changes.revision - before == burst
    # And its reads have their own budget
    assert (await call(jp_fetch, token, "GET", "policy")).code == 200


MAGIC = """
import json
from IPython.core.error import UsageError
try:
    get_ipython().run_line_magic("tfgpu", "policy --growth")
except UsageError as err:
    print(json.dumps(str(err)))
"""


async def test_the_magic_says_the_limit_and_when_to_try_again(jp_fetch, jp_serverapp, tfgpu):
    """Once a kernel has spent its policy changes, %tfgpu policy says so in one sentence."""
    # Given a kernel whose policy budget is spent, on a frozen clock
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "magic.ipynb")
    tfgpu.reports.limiter.clock = FakeClock()
    for _ in range(CHANNEL_LIMITS["policy"].burst):
        await call(jp_fetch, token, "PUT", "policy", {"memory_growth": False})

    # When the user runs %tfgpu policy in it
    said = await run_json(jp_serverapp, kernel_id, MAGIC)

    # Then the magic says the policy was not saved, the limit, and when to try again
    assert said.startswith(
        "the policy was not saved: "
        f"{CHANNEL_LIMITS['policy'].describe()}; try again in "
    ), said
    assert said.endswith(" s")


async def test_a_kernels_budgets_are_forgotten_with_it(jp_fetch, jp_serverapp, tfgpu):
    """What the limiter keeps for a kernel goes when the kernel shuts down."""
    # Given a kernel that used its channel
    kernel_id, token = await kernel_with_token(jp_fetch, jp_serverapp, "gone.ipynb")
    assert (await call(jp_fetch, token, "GET", "policy")).code == 200
    assert kernel_id in tfgpu.reports.limiter.kernel_ids()

    # When it shuts down
    await jp_fetch("api", "kernels", kernel_id, method="DELETE")

    # Then nothing is kept for it
    async def forgotten():
        return kernel_id not in tfgpu.reports.limiter.kernel_ids()

    await poll(forgotten)


# -- policy pushes are coalesced -------------------------------------------------------------------


def test_a_burst_of_changes_is_one_push_now_and_one_with_the_latest_revision_after():
    """100 changes at once: one push at once, one when the interval has passed, which carries
    the last revision; a change after a quiet interval is pushed at once again."""
    # Given a stream whose clock and timers the test drives, and one client
    changes, clock, timers = PolicyChanges(), FakeClock(), FakeTimers()
    stream = StreamMessages(lambda: [], changes, clock=clock, call_later=timers.call_later)
    snapshot = type("Snapshot", (), {"text": '{"timestamp":1,"gpus":[]}'})()
    revisions = []
    stream.on_policy_change(lambda: revisions.append(json.loads(stream.message(snapshot))["policies"]["revision"]))

    # When 100 changes come at the same instant
    for n in range(100):
        changes.record([f"n{n}.ipynb"])
        stream.policies_changed()

    # Then the first is pushed at once and one push is scheduled for the rest
    assert revisions == [1]
    assert [delay for delay, _ in timers.scheduled] == [PUSH_INTERVAL]
    # When the interval has passed
    clock.now += PUSH_INTERVAL
    timers.fire()
    # Then the scheduled push carries the last revision
    assert revisions == [1, 100]
    # And a change after a quiet interval goes out at once, scheduling nothing
    clock.now += PUSH_INTERVAL
    changes.record(["late.ipynb"])
    stream.policies_changed()
    assert revisions == [1, 100, 101] and timers.scheduled == []


async def test_an_open_view_gets_the_latest_revision_not_every_one(
    jp_fetch, jp_ws_fetch, tfgpu
):
    """Ten writes in a row reach a client as the first change and then the last, not ten
    messages; the last change is never lost."""
    # Given a client on the stream, and the stream's clock and timers in the test's hands
    clock, timers = FakeClock(), FakeTimers()
    tfgpu.stream.clock, tfgpu.stream.call_later = clock, timers.call_later
    ws = await jp_ws_fetch("tfgpu", "api", "stream")
    try:
        seen = [json.loads(await asyncio.wait_for(ws.read_message(), 10))["policies"]["revision"]]

        # When ten policies are written through the REST API at the same instant
        for n in range(10):
            await jp_fetch("tfgpu", "api", "policies", f"n{n}.ipynb", method="PUT", body='{"memory_growth": true}')
        last = tfgpu.policies.changes.revision
        # And the push interval passes
        clock.now += PUSH_INTERVAL
        timers.fire()
        while seen[-1] < last:
            seen.append(json.loads(await asyncio.wait_for(ws.read_message(), 10))["policies"]["revision"])
    finally:
        ws.close()

    # Then the client heard the first change and then the last one, nothing between (the first
    # push may already name a later revision, if more were made before it was sent)
    assert seen[0] == 0 and seen[-1] == last and len(seen) <= 3, seen

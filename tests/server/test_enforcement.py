"""Enforcement: caps and idle reaping decided on facts, and carried out on real kernels."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_tfgpu.server.kernels.enforcement import Enforcer, KernelFacts, Rules
from tests.kernel_helpers import run_code, start_session

MiB = 2**20


def facts(kernel_id="k1", peak=500, total=None, limit=300, idle=None):
    """One kernel's facts in MiB."""
    return KernelFacts(
        kernel_id=kernel_id,
        notebook=f"{kernel_id}.ipynb",
        peak_gpu_bytes=peak * MiB,
        total_gpu_bytes=(total if total is not None else peak) * MiB,
        limit_bytes=limit * MiB if limit else None,
        idle_seconds=idle,
    )


class Recorder:
    """Collects what the enforcer did."""

    def __init__(self):
        self.actions, self.events = [], []

    async def act(self, kernel_id, action):
        self.actions.append((kernel_id, action))

    def emit(self, decision):
        self.events.append(decision)


def enforcer(rules: Rules, current: list) -> tuple[Enforcer, Recorder]:
    """An enforcer over a mutable list of facts."""
    recorder = Recorder()
    return Enforcer(rules, lambda: list(current), recorder.act, recorder.emit), recorder


def test_over_cap_waits_for_the_grace_period():
    """Short peaks are forgiven; past the grace the configured action is decided."""
    # Given a kernel over its cap and a 30 s grace
    e, _ = enforcer(Rules(action="restart", grace=30), [facts()])
    # When it has been over for 10 s, then for 31 s
    assert e.decide(now=100.0) == []
    assert e.decide(now=110.0) == []
    decisions = e.decide(now=131.0)
    # Then only the second check restarts it, saying why
    assert [(d.rule, d.action) for d in decisions] == [("memory_cap", "restart")]
    assert "over its cap of 300 MiB" in decisions[0].reason


def test_dropping_under_the_cap_resets_the_clock():
    """Going back under the cap starts the grace period over."""
    current = [facts()]
    e, _ = enforcer(Rules(action="restart", grace=30), current)
    e.decide(now=0.0)
    current[0] = facts(peak=100)
    e.decide(now=20.0)
    current[0] = facts()
    assert e.decide(now=40.0) == []
    assert len(e.decide(now=71.0)) == 1


def test_warn_is_a_dry_run_announced_once_per_episode():
    """In warn mode nothing is done to the kernel and the warning is not repeated."""
    # Given warn mode
    e, recorder = enforcer(Rules(action="warn", grace=0), [facts()])
    # When the enforcer runs on several snapshots
    for _ in range(3):
        asyncio.run(e.enforce())
    # Then one dry-run warning was announced and no kernel action taken
    assert recorder.actions == []
    assert [(d.action, d.dry_run) for d in recorder.events] == [("warn", True)]
    assert "dry run" in recorder.events[0].reason


def test_restart_storms_are_damped():
    """Past max_actions_per_hour the enforcer only warns about that kernel."""
    e, recorder = enforcer(Rules(action="restart", grace=0, max_actions_per_hour=2), [facts()])
    for _ in range(4):
        e._cooldown.clear()  # as if each restart finished and the memory came back at once
        asyncio.run(e.enforce())
    assert recorder.actions == [("k1", "restart"), ("k1", "restart")]
    assert recorder.events[-1].action == "warn"
    assert "max_actions_per_hour" in recorder.events[-1].reason


def test_idle_reaping_only_for_kernels_holding_memory():
    """Idle kernels with GPU memory get the idle action; small or busy ones are left alone."""
    current = [
        facts("idle-big", peak=1000, limit=None, idle=700),
        facts("idle-small", peak=10, limit=None, idle=700),
        facts("busy-big", peak=1000, limit=None, idle=None),
    ]
    e, recorder = enforcer(Rules(idle_timeout=600, idle_min_memory_mb=256, idle_action="shutdown"), current)
    asyncio.run(e.enforce())
    assert recorder.actions == [("idle-big", "shutdown")]


def test_off_does_nothing():
    """With enforcement off and no idle timeout, nothing is decided."""
    e, recorder = enforcer(Rules(), [facts()])
    assert not e.enabled
    asyncio.run(e.enforce())
    assert recorder.events == []


def test_one_kernels_absurd_figure_does_not_stop_decisions_for_others(caplog):
    """A figure no arithmetic survives (10**400 bytes) skips that kernel, logged once."""
    # Given a kernel with an absurd figure listed before one over its cap
    absurd = KernelFacts("bad", None, 10**400, 10**400, 300 * MiB, None)
    e, recorder = enforcer(Rules(action="restart", grace=0), [absurd, facts("k2")])
    # When the enforcer runs twice
    asyncio.run(e.enforce())
    e._cooldown.clear()
    asyncio.run(e.enforce())
    # Then the other kernel was acted on each time, and the bad one logged once
    assert recorder.actions == [("k2", "restart"), ("k2", "restart")]
    assert sum("could not judge kernel bad" in r.getMessage() for r in caplog.records) == 1


def test_a_warning_is_marked_sent_only_once_it_was_sent():
    """An event bus failure leaves the warning unsent; the next pass sends it, then no more."""
    # Given warn mode, and an event bus that fails once
    e, recorder = enforcer(Rules(action="warn", grace=0), [facts()])
    emit = recorder.emit
    calls = []

    def flaky(decision):
        calls.append(decision)
        if len(calls) == 1:
            raise RuntimeError("event bus down")
        emit(decision)

    e._emit = flaky
    # When the enforcer runs three times
    for _ in range(3):
        asyncio.run(e.enforce())
    # Then the warning was tried twice and announced once
    assert len(calls) == 2
    assert [(d.kernel_id, d.action) for d in recorder.events] == [("k1", "warn")]


def test_a_failed_action_does_not_count_and_does_not_stop_others():
    """A restart that raised is not counted towards max_actions_per_hour; others go on."""
    # Given two kernels over their caps, one action per hour, and a first restart of k1 failing
    current = [facts("k1"), facts("k2")]
    e, recorder = enforcer(Rules(action="restart", grace=0, max_actions_per_hour=1), current)
    act = recorder.act
    failed = []

    async def flaky(kernel_id, action):
        if kernel_id == "k1" and not failed:
            failed.append(kernel_id)
            raise RuntimeError("kernel manager busy")
        await act(kernel_id, action)

    e._act = flaky
    # When the enforcer runs, and again once the cool-downs are over
    first = asyncio.run(e.enforce())
    e._cooldown.clear()
    second = asyncio.run(e.enforce())
    # Then k1's failed restart is reported and k2 was restarted
    assert [(d.kernel_id, d.status) for d in first] == [("k1", "failed"), ("k2", "done")]
    # And next time k1 is restarted (its failure did not count), k2 only warned (its did)
    assert [(d.kernel_id, d.action) for d in second] == [("k1", "restart"), ("k2", "warn")]
    assert recorder.actions == [("k2", "restart"), ("k1", "restart")]


def test_kernels_that_are_gone_are_forgotten():
    """History, cool-downs and conditions of a kernel that left the facts are dropped."""
    # Given a kernel acted on, and another warned about
    current = [facts("k1"), facts("k2", limit=None, idle=700)]
    e, _ = enforcer(Rules(action="restart", grace=0, idle_timeout=600), current)
    asyncio.run(e.enforce())
    assert "k1" in e._history and "k1" in e._cooldown
    # When both kernels are gone
    current.clear()
    e.decide()
    # Then nothing is kept for them
    assert (e._history, e._cooldown, e._since, e._announced) == ({}, {}, {}, set())


# -- real server, real kernels, simulated GPUs --------------------------------------------------

ALLOCATE = "import numpy as np\nblock = np.ones(500 * 2**20 // 8)\nprint(block.nbytes)"


@pytest.fixture
def tfgpu_config(request):
    """Simulated GPUs, a 300 MiB cap, a 1 s grace; the action comes from the test's param."""
    return {
        "backend": "simulated",
        "sample_interval": 0.2,
        "process_interval": 0.4,
        "slow_interval": 1.0,
        "max_memory_mb": 300,
        "enforcement": getattr(request, "param", "restart"),
        "enforcement_grace": 1.0,
    }


async def wait_for(condition, timeout=30.0):
    """Poll an async condition until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await condition()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


def listen(jp_serverapp, schema_id):
    """Collect events of one schema from the server's event bus."""
    seen = []

    async def listener(logger, schema_id, data):
        seen.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=schema_id, listener=listener)
    return seen


async def hungry_kernel(jp_fetch, jp_serverapp):
    """A kernel for hungry.ipynb that allocated ~500 MB; the enforcement events it causes."""
    from jupyter_tfgpu.server.services import ENFORCEMENT_EVENT

    events = listen(jp_serverapp, ENFORCEMENT_EVENT)
    session = await start_session(jp_fetch, "hungry.ipynb")
    kernel_id = session["kernel"]["id"]
    pid_before = jp_serverapp.kernel_manager.get_kernel(kernel_id).provisioner.pid
    await run_code(jp_serverapp, kernel_id, ALLOCATE)
    return events, kernel_id, pid_before


@pytest.mark.parametrize("tfgpu_config", ["restart"], indirect=True)
async def test_kernel_over_its_cap_is_restarted_and_told_why(jp_fetch, jp_serverapp):
    """A notebook allocating ~500 MB is seen under its notebook, then restarted past 300 MiB."""
    # Given a kernel for a notebook that allocates about 500 MB
    events, kernel_id, pid_before = await hungry_kernel(jp_fetch, jp_serverapp)
    km = jp_serverapp.kernel_manager

    # Then the GPU process list shows it under its notebook
    async def attributed():
        gpus = json.loads((await jp_fetch("tfgpu", "api", "gpus")).body)["gpus"]
        return [
            p for g in gpus for p in g["processes"]
            if p["notebook"] == "hungry.ipynb" and (p["used_memory"] or 0) > 400 * MiB
        ]

    # (it may already have been restarted by then; the event below says what it held)
    async def restarted():
        return km.get_kernel(kernel_id).provisioner.pid != pid_before and events

    await wait_for(restarted)
    # And the event says why, and GET enforcement lists it
    event = events[0]
    assert event["kernel_id"] == kernel_id and event["notebook"] == "hungry.ipynb"
    assert (event["rule"], event["action"], event["dry_run"]) == ("memory_cap", "restart", False)
    assert event["memory_bytes"] > 400 * MiB and event["limit_bytes"] == 300 * MiB
    recent = json.loads((await jp_fetch("tfgpu", "api", "enforcement")).body)["recent"]
    assert recent[0]["kernel_id"] == kernel_id and "over its cap" in recent[0]["reason"]
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'tfgpu_enforcement_actions_total{action="restart",rule="memory_cap"}' in metrics
    # And after the restart the kernel is below its cap again (once a snapshot taken after the
    # restart is out: the one before it may still show the old process)
    async def below_cap():
        return not await attributed()

    await wait_for(below_cap)


@pytest.mark.parametrize("tfgpu_config", ["warn"], indirect=True)
async def test_warn_mode_kills_nothing(jp_fetch, jp_serverapp):
    """In warn mode the same kernel is attributed and warned about, and keeps running."""
    events, kernel_id, pid_before = await hungry_kernel(jp_fetch, jp_serverapp)
    km = jp_serverapp.kernel_manager

    async def warned():
        return events

    await wait_for(warned)
    assert events[0]["action"] == "warn" and events[0]["dry_run"] is True
    gpus = json.loads((await jp_fetch("tfgpu", "api", "gpus")).body)["gpus"]
    mine = [p for g in gpus for p in g["processes"] if p["kernel_id"] == kernel_id]
    assert mine and mine[0]["notebook"] == "hungry.ipynb" and mine[0]["used_memory"] > 400 * MiB
    # The kernel was not touched: same process, and the allocation is still there
    assert km.get_kernel(kernel_id).provisioner.pid == pid_before
    assert (await run_code(jp_serverapp, kernel_id, "print(block.nbytes)")).strip() == str(500 * MiB)


async def test_metrics_have_gpu_and_kernel_gauges(jp_fetch, jp_serverapp):
    """/metrics carries tfgpu_ gauges per GPU and per kernel with the right labels."""
    session = await start_session(jp_fetch, "metered.ipynb")
    kernel_id = session["kernel"]["id"]

    async def scraped():
        text = (await jp_fetch("metrics")).body.decode()
        held = [l for l in text.splitlines() if l.startswith("tfgpu_kernel_gpu_memory_bytes{") and kernel_id in l]
        return text if held else None

    text = await wait_for(scraped)
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    gpu0 = [labels for labels in samples["tfgpu_gpu_memory_total_bytes"] if labels["gpu"] == "0"]
    assert gpu0 and gpu0[0]["modelName"] == "Simulated GPU 16GB" and gpu0[0]["UUID"]
    for name in ("utilization_ratio", "memory_used_bytes", "temperature_celsius", "power_watts"):
        assert samples[f"tfgpu_gpu_{name}"]
    mine = [labels for labels in samples["tfgpu_kernel_gpu_memory_bytes"] if labels["kernel_id"] == kernel_id]
    assert mine[0]["notebook"] == "metered.ipynb" and mine[0]["source"] == "nvml" and mine[0]["gpu"] == "0"


# -- unknown memory: no episode starts or ends on it --------------------------------------------

STALE = "GPU 0's process list could not be read (NVMLError_Timeout: Timeout)"


def unknown(kernel_id="k1", limit=300, idle=None, why=STALE):
    """A kernel whose memory is unknown on this snapshot: a dropped stale list reads as 0 bytes."""
    return KernelFacts(
        kernel_id=kernel_id,
        notebook=f"{kernel_id}.ipynb",
        peak_gpu_bytes=0,
        total_gpu_bytes=0,
        limit_bytes=limit * MiB if limit else None,
        idle_seconds=idle,
        unknown=why,
    )


def test_one_unknown_read_per_grace_period_does_not_postpone_the_cap_for_ever():
    """A process list that fails every 20 s of a 30 s grace: the kernel is acted on at 30 s."""
    # Given a kernel over its cap, a 30 s grace, and every third snapshot unknown
    current = [facts()]
    e, _ = enforcer(Rules(action="restart", grace=30), current)
    decided = {}
    # When snapshots come every 10 s
    for now in range(0, 50, 10):
        current[0] = unknown() if now % 20 == 10 else facts()
        decided[now] = [(d.rule, d.action) for d in e.decide(now=float(now))]
    # Then the unknown ones neither ended the episode nor acted; the first known one past the
    # grace (at 40 s: 30 s is unknown) restarts it
    assert decided == {0: [], 10: [], 20: [], 30: [], 40: [("memory_cap", "restart")]}


def test_unknown_memory_starts_no_episode():
    """An unknown figure does not start the grace period: it starts at the first known one."""
    # Given a kernel whose memory is unknown at first, then known over its cap
    current = [unknown()]
    e, _ = enforcer(Rules(action="restart", grace=30), current)
    assert e.decide(now=0.0) == []
    current[0] = facts()
    # When it is known from 20 s on
    assert e.decide(now=20.0) == []
    # Then the grace counts from 20 s
    assert e.decide(now=49.0) == []
    assert len(e.decide(now=51.0)) == 1


def test_unknown_memory_keeps_the_idle_episode_and_busy_ends_it():
    """An idle kernel holding memory: an unknown read keeps it pending; running code ends it."""
    rules = Rules(idle_timeout=600, idle_min_memory_mb=256, idle_action="shutdown")
    # Given an idle kernel holding 1000 MiB whose memory then reads unknown
    current = [unknown(limit=None, idle=700)]
    e, recorder = enforcer(rules, current)
    # When the enforcer runs on the unknown snapshot
    asyncio.run(e.enforce())
    # Then nothing is done
    assert recorder.actions == []
    # When the memory is known again
    current[0] = facts(peak=1000, limit=None, idle=701)
    asyncio.run(e.enforce())
    # Then the idle action comes at once
    assert recorder.actions == [("k1", "shutdown")]
    # And a busy kernel with unknown memory is not idle (busy is known)
    busy = unknown(limit=None, idle=None)
    assert [holds for _, holds, _, _ in e._rules_for(busy)] == [False]


def test_waiting_on_unknown_memory_is_logged_once_per_episode(caplog):
    """The enforcer says once that it cannot judge a kernel, and why."""
    caplog.set_level("INFO")
    current = [facts()]
    e, _ = enforcer(Rules(action="restart", grace=30), current)
    e.decide(now=0.0)
    current[0] = unknown()
    for now in (10.0, 11.0, 12.0):
        e.decide(now=now)
    said = [r.getMessage() for r in caplog.records if "not judged" in r.getMessage()]
    assert len(said) == 1
    assert STALE in said[0] and "its episode is kept" in said[0]


def test_the_decision_says_when_the_figure_is_the_kernels_own_report():
    """Acting on a figure the kernel reported itself, the reason says so."""
    # Given a kernel whose only figure is its own report
    reported = facts()
    reported.peak_source = reported.memory_source = "kernel_report"
    e, _ = enforcer(Rules(action="warn", grace=0), [reported])
    # When the enforcer decides
    [decision] = e.decide(now=0.0)
    # Then its reason names the source
    assert "by its own report" in decision.reason and "over its cap of 300 MiB" in decision.reason

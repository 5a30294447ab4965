"""The server's hard caps: which mode is in force and why, and what a kernel starts with whatever
its mechanism does (a mechanism that records its calls stands in for mps and nvml)."""

from __future__ import annotations

import asyncio
import os
import threading
from importlib.resources import files

import pytest
import yaml
from jsonschema import Draft202012Validator

from jupyter_tfgpu.gpu import DeviceInfo, GiB
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.server.hardcaps.mechanism import Prepared, StartingKernel
from jupyter_tfgpu.server.hardcaps.service import HardCaps
from tests.fake_pynvml import FakeGpu, FakeNvml
from tests.server.hardcaps_helpers import (
    WRAPPED_ENV,
    RecordingMechanism,
    probe,
    reset_recording,
    with_mechanism,
)

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
DEVICES = (DeviceInfo(index=0, uuid=GPU0, name="NVIDIA A100", memory_total=80 * GiB),)
SPEC = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())


@pytest.fixture(autouse=True)
def recording():
    reset_recording()
    yield RecordingMechanism
    reset_recording()


def hard_caps(tmp_path, asked: str, **probe_fields) -> HardCaps:
    nvml = FakeNvml([FakeGpu()], driver_version="615.71.09").module
    return HardCaps(asked, tmp_path / "runtime", probe=probe(tmp_path, nvml, **probe_fields))


def starting(policy: dict, kernel_id: str = "k1", language: str = "python") -> StartingKernel:
    return StartingKernel(kernel_id, Launch.render(policy, list(DEVICES)), language, DEVICES)


def status_schema() -> dict:
    return {**SPEC["components"]["schemas"]["HardCapsStatus"], "components": SPEC["components"]}


def test_off_looks_at_nothing_and_holds_caps_by_framework_settings(tmp_path):
    """The default: no probe of the machine, no thread, no driver limit."""
    caps = hard_caps(tmp_path, "off")
    caps.start()
    prepared = asyncio.run(caps.prepare(starting({"memory_limit_mb": 4096})))
    assert prepared.enforcement.level == "framework" and dict(prepared.env) == {}
    state = caps.to_json()
    Draft202012Validator(status_schema()).validate(state)
    assert (state["asked"], state["in_force"], state["reason"], state["host"]) == ("off", "off", None, None)
    assert [m["missing"] for m in state["modes"]] == [None, None]
    assert "tfgpu-hardcaps" not in {t.name for t in threading.enumerate()}
    assert caps.describe() == "hard caps off: framework settings and the enforcer hold caps, no driver limit"


def test_a_named_mode_this_machine_cannot_run_is_a_start_up_problem(tmp_path, monkeypatch):
    """mps lacking its binary here: off is in force, and the admin's choice is a problem."""
    with_mechanism(monkeypatch, "mps", missing=lambda host: ["nvidia-cuda-mps-control is not on PATH"])
    caps = hard_caps(tmp_path, "mps")
    caps.start()
    assert caps.mode.name == "off" and RecordingMechanism.made == []
    assert caps.problem == ("'mps' cannot be used here, so hard caps are off: mps: "
                            "nvidia-cuda-mps-control is not on PATH")  # fmt: skip
    state = caps.to_json()
    Draft202012Validator(status_schema()).validate(state)
    assert state["in_force"] == "off" and state["reason"] == caps.reason
    assert state["host"]["driver"] == "615.71.09"


def test_a_mode_this_version_has_no_mechanism_for_lacks_that_first(tmp_path, monkeypatch):
    with_mechanism(monkeypatch, "mps", make=None, missing=lambda host: ["no binary"])
    caps = hard_caps(tmp_path, "mps")
    caps.start()
    assert caps.lacks["mps"] == ["this version of jupyter-tfgpu has no 'mps' mechanism yet", "no binary"]
    assert [m["implemented"] for m in caps.to_json()["modes"] if m["name"] == "mps"] == [False]


def test_a_named_mode_whose_needs_are_met_starts_its_mechanism_in_the_workers_thread(tmp_path, monkeypatch):
    with_mechanism(monkeypatch, "mps")
    caps = hard_caps(tmp_path, "mps")
    caps.start()
    mechanism = RecordingMechanism.made[-1]
    assert caps.mode.name == "mps" and caps.mechanism is mechanism
    assert (caps.problem, caps.reason) == (None, None)
    assert mechanism.names() == ["start"] and mechanism.threads == {"tfgpu-hardcaps"}
    assert mechanism.context.host.driver == "615.71.09"
    assert mechanism.context.runtime_dir == tmp_path / "runtime"
    state = caps.to_json()
    Draft202012Validator(status_schema()).validate(state)
    assert state["mechanism"] == {"name": "mps", "state": "running", "detail": "recording",
                                  "facts": {"calls": 1}}  # fmt: skip
    assert caps.describe() == "hard caps mps: a driver limit per kernel (mps), not yet shown on a GPU"


def test_auto_takes_the_first_mode_that_can_run_and_says_why_not_the_ones_before(tmp_path, monkeypatch):
    """nvml lacks root and cgroup v2 here; mps runs."""
    with_mechanism(monkeypatch, "mps")
    caps = hard_caps(tmp_path, "auto")
    caps.start()
    assert caps.mode.name == "mps" and caps.problem is None
    assert caps.reason.startswith("nvml: no cgroup v2 hierarchy at ")
    assert "does not run as root (uid 1000)" in caps.reason
    assert caps.lacks["mps"] == [] and caps.lacks["nvml"]


def test_auto_with_nothing_that_runs_is_off_saying_why_each_mode_is_not(tmp_path, monkeypatch):
    """A mechanism that fails to start is passed over like one that lacks something."""
    with_mechanism(monkeypatch, "mps")
    RecordingMechanism.fail_start = "the daemon exited with 1"
    caps = hard_caps(tmp_path, "auto")
    caps.start()
    assert caps.mode.name == "off" and caps.problem is None
    assert "; mps: it did not start (the daemon exited with 1)" in caps.reason
    assert caps.describe().startswith("hard caps off: framework settings and the enforcer hold "
                                      "caps, no driver limit (asked for auto: nvml: ")  # fmt: skip


def test_a_check_that_does_not_end_in_time_leaves_hard_caps_off_and_stops_what_starts_late(
    tmp_path, monkeypatch
):
    # Given a mechanism whose start hangs until released
    release = threading.Event()

    class Slow(RecordingMechanism):
        def start(self):
            super().start()
            release.wait(10)

    with_mechanism(monkeypatch, "mps", Slow)
    caps = hard_caps(tmp_path, "mps")
    # When the server waits no longer
    caps.start(seconds=0)
    # Then hard caps are off, said as a problem
    assert caps.mode.name == "off"
    assert "took longer than 0 s" in caps.problem
    # And once the start ends, the mechanism is stopped, never put in force
    release.set()
    caps._worker.submit(lambda: None).result(timeout=10)
    assert Slow.made[-1].names() == ["start", "stop"] and caps.mode.name == "off"


# -- per kernel -----------------------------------------------------------------------------------


def running(tmp_path, monkeypatch, asked: str = "mps") -> tuple[HardCaps, RecordingMechanism]:
    with_mechanism(monkeypatch, "mps")
    caps = hard_caps(tmp_path, asked)
    caps.start()
    return caps, RecordingMechanism.made[-1]


async def test_a_kernel_gets_what_its_mechanism_prepares(tmp_path, monkeypatch):
    caps, mechanism = running(tmp_path, monkeypatch)
    RecordingMechanism.wrapper = ("cgexec", "--")
    prepared = await caps.prepare(starting({"memory_limit_mb": 4096}, language="python"))
    assert dict(prepared.env) == {WRAPPED_ENV: "limit=4096"}
    assert prepared.wrapper == ("cgexec", "--")
    assert [g.mechanism for g in prepared.enforcement.gpus] == ["mps"]
    assert prepared.enforcement.level == "framework"  # no GPU run has shown mps holding
    assert mechanism.calls[-1] == ("prepare", "k1", "python", (GPU0,))
    assert mechanism.threads == {"tfgpu-hardcaps"}


async def test_a_mechanism_that_fails_leaves_the_kernel_its_framework_settings_saying_why(
    tmp_path, monkeypatch
):
    # Given a mechanism that cannot hold this kernel
    caps, mechanism = running(tmp_path, monkeypatch)
    RecordingMechanism.fail_prepare = "no daemon answers"
    # When the kernel is prepared
    prepared = await caps.prepare(starting({"memory_limit_mb": 4096}))
    # Then it starts cooperative, the reason naming what failed, and nothing is left set for it
    assert (dict(prepared.env), prepared.wrapper) == ({}, ())
    assert prepared.enforcement.level == "framework"
    assert prepared.enforcement.reason.startswith(
        "the mps limit could not be set (no daemon answers); the framework settings"
    )
    assert mechanism.names()[-2:] == ["prepare", "release"]


async def test_a_mechanism_answer_that_is_not_prepared_is_a_failure(tmp_path, monkeypatch):
    caps, mechanism = running(tmp_path, monkeypatch)
    mechanism.prepare = lambda kernel: {"env": {}}
    prepared = await caps.prepare(starting({"memory_limit_mb": 4096}))
    assert "returned dict, not Prepared" in prepared.enforcement.reason


async def test_a_mechanism_that_does_not_answer_in_time_does_not_hold_the_start(tmp_path, monkeypatch):
    # Given a mechanism whose prepare hangs
    caps, mechanism = running(tmp_path, monkeypatch)
    release = threading.Event()
    prepare = mechanism.prepare
    mechanism.prepare = lambda kernel: (release.wait(10), prepare(kernel))[1]
    caps.prepare_seconds = 0
    # When the kernel starts
    prepared = await caps.prepare(starting({"memory_limit_mb": 4096}))
    # Then it starts cooperative at once, saying so
    assert prepared.enforcement.reason.startswith("the mps mechanism did not answer within 0 s")
    # And the kernel is released after its prepare, whether that was still queued (then it
    # never runs) or already running (then it ends first)
    release.set()
    await asyncio.wrap_future(caps._worker.submit(lambda: None))
    names = mechanism.names()
    assert names[-1] == "release" and names.count("release") == 1


async def test_signals_and_releases_reach_the_mechanism_for_the_kernels_it_holds(tmp_path, monkeypatch):
    caps, mechanism = running(tmp_path, monkeypatch)
    await caps.before_signal("k1", os.getpid())  # not prepared: nothing to do
    await caps.prepare(starting({"memory_limit_mb": 4096}))
    await caps.before_signal("k1", os.getpid())
    await asyncio.wrap_future(caps.release("k1"))
    await caps.before_signal("k1", os.getpid())  # released: nothing to do
    assert mechanism.names() == ["start", "prepare", "before_signal", "release"]
    assert mechanism.calls[2][:2] == ("before_signal", "k1")
    assert mechanism.calls[2][2][0] == os.getpid()  # the kernel's process, then its descendants


async def test_once_stopped_nothing_more_reaches_the_mechanism(tmp_path, monkeypatch):
    caps, mechanism = running(tmp_path, monkeypatch)
    caps.stop()
    caps.stop()
    assert mechanism.names() == ["start", "stop"]
    assert caps.release("k1") is None
    prepared = await caps.prepare(starting({"memory_limit_mb": 4096}))
    assert prepared.enforcement.reason.startswith("the server is stopping;")


def test_a_mechanism_reports_a_running_kernels_enforcement_through_its_context(tmp_path, monkeypatch):
    caps, mechanism = running(tmp_path, monkeypatch)
    told = []
    caps.on_report = lambda kernel_id, enforcement: told.append((kernel_id, enforcement.level))
    mechanism.context.report("k1", CapEnforcement.without_gpus("framework", "mps", "daemon died"))
    assert told == [("k1", "framework")]


def test_a_policy_applied_in_process_keeps_the_start_while_the_cap_is_the_same(tmp_path):
    caps = hard_caps(tmp_path, "off")
    held = CapEnforcement.of([GpuEnforcement(GPU0, "framework", "mps", "liftable")])
    started = Launch.render({"memory_limit_mb": 4096, "devices": [0]}, list(DEVICES), enforcement=held)
    same = Launch.render({"memory_limit_mb": 4096, "devices": [0], "memory_growth": True}, list(DEVICES))
    assert caps.in_process(started, same, DEVICES) is held
    # Another cap: framework settings hold it, and the driver limit of the start is said
    other = Launch.render({"memory_limit_mb": 2048, "devices": [0]}, list(DEVICES))
    changed = caps.in_process(started, other, DEVICES)
    assert changed.level == "framework" and changed.mechanism == "framework_settings"
    assert changed.reason.startswith("it applied a new policy in-process; the mps limit set at its "
                                     "start stays until it restarts")  # fmt: skip
    # Started without a driver limit: simply its framework settings
    assert caps.in_process(None, other, DEVICES).reason.startswith("the framework settings")


def test_prepared_is_checked_before_it_reaches_a_kernel():
    from jupyter_tfgpu.server.hardcaps.service import _valid

    held = CapEnforcement.without_gpus("none", None, "no cap")
    assert _valid(Prepared(held, {"A": "1", "B": None}, ("x",)))
    with pytest.raises(TypeError, match="env"):
        _valid(Prepared(held, {"A": 1}))
    with pytest.raises(TypeError, match="wrapper"):
        _valid(Prepared(held, {}, (1,)))

"""The launch ledger: what each kernel started with, kept with the kernels until they are gone."""

from __future__ import annotations

import json

from jupyter_tfgpu.gpu import DeviceInfo, GiB
from jupyter_tfgpu.policy import AdminPolicy, PolicyService, PolicyStore
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement
from jupyter_tfgpu.server.hardcaps.service import HardCaps
from jupyter_tfgpu.server.kernels.launches import KernelLaunches
from tests.server.hardcaps_helpers import (
    WRAPPED_ENV,
    RecordingMechanism,
    probe,
    reset_recording,
    with_mechanism,
)

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-2222-3333-4444-555555555555"
DEVICES = [
    DeviceInfo(index=0, uuid=GPU0, name="NVIDIA T4", memory_total=16 * GiB),
    DeviceInfo(index=1, uuid=GPU1, name="NVIDIA T4", memory_total=16 * GiB),
]


class OnePlacement:
    """Places every kernel on GPU 1; records releases."""

    strategy = "least_used"

    def __init__(self) -> None:
        self.released: list[str] = []

    def choose(self, kernel_id, count, memory_limit_mb, allowed=None):
        """GPU 1, whatever is asked."""
        return {"strategy": self.strategy, "requested": count, "chosen": [GPU1], "reason": "free"}

    def release(self, kernel_id: str) -> None:
        """Record that the kernel's reservation was dropped."""
        self.released.append(kernel_id)


class Clock:
    """A clock the test sets."""

    now = 500.0

    def __call__(self) -> float:
        return self.now


def ledger(tmp_path) -> tuple[KernelLaunches, OnePlacement]:
    """A ledger over a policy service whose notebook asks for one GPU placed by "auto"."""
    placement = OnePlacement()
    policies = PolicyService(
        PolicyStore(tmp_path / "policies.json"),
        AdminPolicy(),
        devices=lambda: DEVICES,
        root_dir=str(tmp_path),
        placement=placement,
    )
    policies.set("nb.ipynb", {"devices": "auto", "gpu_count": 1})
    return KernelLaunches(policies, clock=Clock()), placement


async def test_a_start_keeps_the_launch_and_counts_its_placement(tmp_path):
    """The environment goes to the kernel; the launch stays with the ledger, read back whole."""
    # Given a ledger
    launches, _ = ledger(tmp_path)
    # When a kernel starts for the notebook, and another one without a kernel id
    env = (await launches.start("k1", str(tmp_path / "nb.ipynb"))).env
    await launches.start(None, str(tmp_path / "nb.ipynb"))
    # Then the kernel's launch is kept, with what it got, and both placements are counted
    launch = launches.of("k1")
    assert env["CUDA_VISIBLE_DEVICES"] == GPU1
    assert (launch.notebook, launch.devices, launch.placement["chosen"]) == ("nb.ipynb", [GPU1], [GPU1])
    assert launches.kernel_ids() == {"k1"}
    assert launches.placements() == {("least_used", "placed"): 2}


async def test_a_policy_applied_in_process_becomes_the_launch_at_the_ledgers_time(tmp_path):
    """The server's rendering of the notebook's policy, its start time and placement kept."""
    # Given a kernel placed at start, and the notebook's policy changed since
    launches, _ = ledger(tmp_path)
    await launches.start("k1", str(tmp_path / "nb.ipynb"))
    started = launches.of("k1")
    launches.policies.set("nb.ipynb", {"devices": "auto", "gpu_count": 1, "memory_growth": True})
    # When it applies the policy in-process
    applied = launches.applied_in_process("k1", "nb.ipynb")
    # Then that is its launch now, on the GPU it was placed on
    assert launches.of("k1") is applied
    assert applied.fields["memory_growth"] is True and applied.devices == [GPU1]
    assert (applied.started, applied.in_process_at) == (started.started, 500.0)
    assert applied.placement == started.placement


def test_a_kernel_not_started_here_that_applies_a_policy_has_no_start_time(tmp_path):
    """A kernel the ledger has no launch for: the rendering, with no start and no placement."""
    launches, _ = ledger(tmp_path)
    applied = launches.applied_in_process("k9", "nb.ipynb")
    document = applied.to_json()
    assert (document["started"], document["applied_in_process"]) == (None, 500.0)
    assert "placement" not in document


async def test_a_forgotten_kernel_leaves_nothing_and_frees_its_gpus(tmp_path):
    """Forgetting drops the launch and releases the kernel's placement."""
    launches, placement = ledger(tmp_path)
    await launches.start("k1", str(tmp_path / "nb.ipynb"))
    launches.forget("k1")
    assert launches.of("k1") is None and launches.kernel_ids() == set()
    assert placement.released == ["k1"]


# -- how each kernel's cap is enforced -------------------------------------------------------------


async def test_a_start_says_how_the_kernels_cap_is_enforced_and_tells_the_kernel(tmp_path):
    """With hard caps off: framework settings per GPU, in the launch and in its TFGPU_POLICY."""
    launches, _ = ledger(tmp_path)
    launches.policies.set("nb.ipynb", {"devices": "auto", "gpu_count": 1, "memory_limit_mb": 4096})
    start = await launches.start("k1", str(tmp_path / "nb.ipynb"), language="python")
    enforcement = launches.of("k1").enforcement
    assert (enforcement.level, [g.gpu for g in enforcement.gpus]) == ("framework", [GPU1])
    assert json.loads(start.env["TFGPU_POLICY"])["enforcement"] == enforcement.to_json()
    assert start.wrapper == ()


async def test_a_non_python_kernels_cap_is_reached_by_no_setting(tmp_path):
    launches, _ = ledger(tmp_path)
    launches.policies.set("nb.ipynb", {"devices": "auto", "gpu_count": 1, "memory_limit_mb": 4096})
    await launches.start("k1", str(tmp_path / "nb.ipynb"), language="R")
    enforcement = launches.of("k1").enforcement
    assert enforcement.level == "none" and enforcement.reason.startswith("a R kernel")


def recording_ledger(tmp_path, monkeypatch) -> tuple[KernelLaunches, RecordingMechanism]:
    """A ledger whose hard caps run the recording mechanism in mode mps."""
    reset_recording()
    with_mechanism(monkeypatch, "mps")
    caps = HardCaps("mps", tmp_path / "runtime", probe=probe(tmp_path))
    caps.start()
    launches, _ = ledger(tmp_path)
    launches = KernelLaunches(launches.policies, clock=Clock(), hard_caps=caps)
    return launches, RecordingMechanism.made[-1]


async def test_what_the_mechanism_prepares_reaches_the_kernels_start(tmp_path, monkeypatch):
    """Its variables, its wrapper, and its enforcement in the launch and TFGPU_POLICY."""
    launches, mechanism = recording_ledger(tmp_path, monkeypatch)
    RecordingMechanism.wrapper = ("cgexec", "--")
    launches.policies.set("nb.ipynb", {"devices": "auto", "gpu_count": 1, "memory_limit_mb": 4096})
    start = await launches.start("k1", str(tmp_path / "nb.ipynb"), language="python")
    assert start.env[WRAPPED_ENV] == "limit=4096" and start.wrapper == ("cgexec", "--")
    assert launches.of("k1").enforcement.mechanism == "mps"
    assert json.loads(start.env["TFGPU_POLICY"])["enforcement"]["mechanism"] == "mps"
    assert mechanism.calls[-1] == ("prepare", "k1", "python", (GPU1,))
    # A start without a kernel id (nothing could release it): framework settings, no mechanism
    anonymous = await launches.start(None, str(tmp_path / "nb.ipynb"))
    assert WRAPPED_ENV not in anonymous.env and mechanism.names().count("prepare") == 1


async def test_a_kernels_hard_cap_is_released_and_told_before_its_signals(tmp_path, monkeypatch):
    launches, mechanism = recording_ledger(tmp_path, monkeypatch)
    await launches.start("k1", str(tmp_path / "nb.ipynb"))
    await launches.before_signal("k1", 4242)
    await launches.release("k1")
    launches.forget("k1")  # released once more, in the worker: harmless
    await launches.release("k1")
    assert mechanism.names() == ["start", "prepare", "before_signal", "release", "release", "release"]
    assert mechanism.calls[2][:2] == ("before_signal", "k1")


async def test_a_mechanism_that_reports_a_running_kernel_changes_its_launch(tmp_path, monkeypatch):
    launches, mechanism = recording_ledger(tmp_path, monkeypatch)
    await launches.start("k1", str(tmp_path / "nb.ipynb"))
    started = launches.of("k1")
    dead = CapEnforcement.without_gpus("framework", "mps", "its MPS daemon died")
    mechanism.context.report("k1", dead)
    mechanism.context.report("k9", dead)  # a kernel not kept here: nothing
    assert launches.of("k1").enforcement is dead
    assert launches.of("k1").fields == started.fields
    assert launches.kernel_ids() == {"k1"}


async def test_a_policy_applied_in_process_says_how_its_cap_is_held(tmp_path):
    launches, _ = ledger(tmp_path)
    await launches.start("k1", str(tmp_path / "nb.ipynb"))
    launches.policies.set("nb.ipynb", {"devices": "auto", "gpu_count": 1, "memory_limit_mb": 2048})
    applied = launches.applied_in_process("k1", "nb.ipynb")
    assert applied.enforcement.level == "framework"
    assert applied.to_json()["enforcement"]["gpus"][0]["gpu"] == GPU1

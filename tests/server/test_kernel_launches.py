"""The launch ledger: what each kernel started with, kept with the kernels until they are gone."""

from __future__ import annotations

from jupyter_tfgpu.gpu import DeviceInfo, GiB
from jupyter_tfgpu.policy import AdminPolicy, PolicyService, PolicyStore
from jupyter_tfgpu.server.kernels.launches import KernelLaunches

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


def test_a_start_keeps_the_launch_and_counts_its_placement(tmp_path):
    """The environment goes to the kernel; the launch stays with the ledger, read back whole."""
    # Given a ledger
    launches, _ = ledger(tmp_path)
    # When a kernel starts for the notebook, and another one without a kernel id
    env = launches.start("k1", str(tmp_path / "nb.ipynb"))
    launches.start(None, str(tmp_path / "nb.ipynb"))
    # Then the kernel's launch is kept, with what it got, and both placements are counted
    launch = launches.of("k1")
    assert env["CUDA_VISIBLE_DEVICES"] == GPU1
    assert (launch.notebook, launch.devices, launch.placement["chosen"]) == ("nb.ipynb", [GPU1], [GPU1])
    assert launches.kernel_ids() == {"k1"}
    assert launches.placements() == {("least_used", "placed"): 2}


def test_a_policy_applied_in_process_becomes_the_launch_at_the_ledgers_time(tmp_path):
    """The server's rendering of the notebook's policy, its start time and placement kept."""
    # Given a kernel placed at start, and the notebook's policy changed since
    launches, _ = ledger(tmp_path)
    launches.start("k1", str(tmp_path / "nb.ipynb"))
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


def test_a_forgotten_kernel_leaves_nothing_and_frees_its_gpus(tmp_path):
    """Forgetting drops the launch and releases the kernel's placement."""
    launches, placement = ledger(tmp_path)
    launches.start("k1", str(tmp_path / "nb.ipynb"))
    launches.forget("k1")
    assert launches.of("k1") is None and launches.kernel_ids() == set()
    assert placement.released == ["k1"]

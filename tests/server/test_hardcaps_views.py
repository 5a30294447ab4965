"""How a kernel's cap is enforced as its views say it now, and as the enforcer's events carry it."""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files

import yaml
from jsonschema import Draft202012Validator

from jupyter_tfgpu.gpu import DeviceInfo, GiB, MiB
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.server.kernels import views
from jupyter_tfgpu.server.kernels.enforcement import Enforcer, KernelFacts, Rules
from jupyter_tfgpu.server.kernels.memory import KernelMemory

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
DEVICES = [DeviceInfo(index=0, uuid=GPU0, name="NVIDIA A100", memory_total=80 * GiB)]
HARD = CapEnforcement.of([GpuEnforcement(GPU0, "driver", "nvml_memory_limit", None)])


class Policies:
    """The policy in force for every notebook: a cap of ``cap`` MiB."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap

    def effective(self, notebook):
        return {"memory_limit_mb": self.cap} if self.cap else {}

    def rendered(self, notebook):
        return Launch.render(self.effective(notebook), DEVICES)

    def own(self, notebook):
        return None


def row(launch: Launch | None, provisioner: str = "TFGPUProvisioner") -> views.KernelRow:
    return views.KernelRow("k1", "python3", "nb.ipynb", "idle", None, 4242, provisioner, launch, KernelMemory())


def started(enforcement: CapEnforcement, cap: int = 4096) -> Launch:
    return Launch.render({"memory_limit_mb": cap, "devices": [0]}, DEVICES, enforcement=enforcement)


def test_a_kernel_says_the_enforcement_it_started_with():
    assert views.enforcement(row(started(HARD)), Policies(4096)) is HARD


def test_a_driver_limit_above_a_cap_lowered_since_is_not_a_hard_cap_of_the_new_cap():
    """A caps file lowered the cap: the driver holds the old one, the enforcer the new one."""
    said = views.enforcement(row(started(HARD)), Policies(2048))
    assert (said.level, said.mechanism) == ("framework", "nvml_memory_limit")
    assert said.reason == (
        "its cap was lowered to 2048 MiB while it ran; the driver holds the 4096 MiB it started "
        "with, the enforcer the new cap"
    )
    # A raised cap changes nothing: the kernel is held to the lower one it started with
    assert views.enforcement(row(started(HARD)), Policies(8192)) is HARD


def test_a_kernel_started_without_this_servers_policy_is_reached_by_no_setting():
    said = views.enforcement(row(None, "LocalProvisioner"), Policies(4096))
    assert (said.level, said.mechanism) == ("none", None)
    assert "(by LocalProvisioner)" in said.reason


def test_the_views_carry_the_level():
    kernel = row(started(HARD))
    policies = Policies(4096)
    assert views.summary(kernel, policies)["enforcement"] == "driver"
    assert views.metrics_row(kernel, policies, datetime.now())["enforcement"] == "driver"


def test_an_enforcement_decision_carries_the_level_at_the_time_into_its_event():
    # Given a kernel over its cap, its cap held by framework settings
    facts = KernelFacts("k1", "nb.ipynb", 3 * GiB, 3 * GiB, 2 * GiB, None, enforcement="framework")
    enforcer = Enforcer(Rules(action="warn", grace=0), lambda: [facts], act=None, emit=lambda d: None)
    # When the enforcer decides
    (decision,) = enforcer.decide(now=100.0)
    # Then its event says the level, and validates against the event's schema
    event = decision.to_event()
    assert event["enforcement"] == "framework"
    schema = yaml.safe_load(files("jupyter_tfgpu.server.events").joinpath("enforcement.yaml").read_text())
    Draft202012Validator(schema).validate(event)
    assert decision.limit_bytes == 2048 * MiB

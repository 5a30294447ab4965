"""The launch: one frozen type for what a kernel started with; its JSON is the API's ``applied``
(the OpenAPI spec) and the kernel's ``TFGPU_POLICY``, key for key as the server has sent it."""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import pytest
import yaml
from jsonschema import Draft202012Validator

from jupyter_tfgpu.gpu import DeviceInfo, GiB
from jupyter_tfgpu.policy.cap_enforcement import CapEnforcement, GpuEnforcement
from jupyter_tfgpu.policy.environment import ContextReserve
from jupyter_tfgpu.policy.launch import FrameworkLimit, Launch
from jupyter_tfgpu.policy.model import policy_field_names

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-2222-3333-4444-555555555555"
DEVICES = [
    DeviceInfo(index=0, uuid=GPU0, name="NVIDIA H200", memory_total=16 * GiB),
    DeviceInfo(index=1, uuid=GPU1, name="NVIDIA T4", memory_total=8 * GiB),
]
RESERVE = ContextReserve(400, "measured", "NVIDIA H200, driver 580.159.04")
PLACEMENT = {"strategy": "least_used", "requested": 1, "chosen": [GPU1], "reason": "most free"}
COOPERATIVE = CapEnforcement.of(
    [GpuEnforcement(GPU1, "framework", "framework_settings", "code in the kernel can undo them")]
)
FIELDS = list(policy_field_names())


def placed_start(**context) -> Launch:
    """A kernel placed by "auto" on GPU 1 with a cap, started at 100.0."""
    policy = {"memory_limit_mb": 4096, "devices": [GPU1], "gpu_count": 1}
    return Launch.render(
        policy, DEVICES, RESERVE, notebook="nb.ipynb", kernel_id="k1", started=100.0,
        placement=PLACEMENT, **context,
    )  # fmt: skip


def test_a_start_is_written_as_the_server_has_always_written_it():
    """Fields in the schema's order, the framework limit, the context, the placement, the
    error: the keys and their order of the document the server sent before the type."""
    document = placed_start(error="could not", refused={"devices": "auto"}).to_json()
    assert list(document) == [
        *FIELDS,
        "framework_limit_mb", "context_reserve_mb", "context_reserve_source",
        "context_reserve_measured_on",
        "notebook", "kernel_id", "started", "devices_requested", "placement", "error",
    ]  # fmt: skip
    assert document["devices"] == [GPU1]
    assert document["framework_limit_mb"] == 3696
    assert (document["devices_requested"], document["placement"]) == ("auto", PLACEMENT)
    assert "refused" not in document  # kept for restart_required, not sent


def test_a_policy_applied_in_process_keeps_the_start_and_the_placement():
    """The kernel's start time and its placement stay; the fields are the policy it applied,
    in the order the server has always written them."""
    started = placed_start()
    now = Launch.render(
        {"memory_growth": True, "devices": [GPU1]}, DEVICES, notebook="nb.ipynb", kernel_id="k1"
    )
    launch = started.applied_in_process(now, 200.0)
    document = launch.to_json()
    assert list(document) == [
        *FIELDS, "notebook", "kernel_id", "devices_requested", "placement", "started",
        "applied_in_process",
    ]  # fmt: skip
    assert (document["started"], document["applied_in_process"]) == (100.0, 200.0)
    assert document["memory_growth"] is True
    # A policy that no longer names GPUs drops the placement
    anywhere = Launch.render({"memory_growth": True}, DEVICES, kernel_id="k1")
    assert started.applied_in_process(anywhere, 200.0).placement is None


def test_what_a_start_would_apply_carries_no_start_time():
    """A rendering for a running kernel (next_start): fields, limit, notebook and kernel."""
    launch = Launch.render({"memory_limit_mb": 300}, DEVICES, RESERVE, notebook=None, kernel_id="k")
    document = launch.to_json()
    assert list(document) == [
        *FIELDS, "framework_limit_mb", "context_reserve_mb", "context_reserve_source",
        "context_reserve_measured_on", "memory_limit_note", "notebook", "kernel_id",
    ]  # fmt: skip
    assert launch.framework_limit == FrameworkLimit(300, RESERVE, document["memory_limit_note"])


def test_how_its_cap_is_enforced_is_written_last_per_gpu_and_overall():
    """The enforcement the hard-caps mechanism decided at start: after every key sent before
    it, overall (the weakest GPU's level, mechanism and reason) and per GPU."""
    launch = dataclasses.replace(placed_start(), enforcement=COOPERATIVE)
    document = launch.to_json()
    assert list(document)[-1] == "enforcement"
    assert document["enforcement"] == {
        "level": "framework",
        "mechanism": "framework_settings",
        "reason": "code in the kernel can undo them",
        "gpus": [
            {
                "gpu": GPU1,
                "level": "framework",
                "mechanism": "framework_settings",
                "reason": "code in the kernel can undo them",
            }
        ],
    }
    assert "enforcement" not in placed_start().to_json()  # a rendering no kernel started with


def test_a_launch_is_frozen_and_read_by_attributes():
    """No member or field changes after the launch is made."""
    launch = placed_start()
    with pytest.raises(dataclasses.FrozenInstanceError):
        launch.error = "later"  # type: ignore[misc]
    with pytest.raises(TypeError):
        launch.fields["memory_limit_mb"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        launch.placement["chosen"] = []  # type: ignore[index]
    assert (launch.memory_limit_mb, launch.gpus, launch.context_reserve_mb) == (4096, [GPU1], 400)
    assert Launch.render({"devices": [0]}, []).gpus == ["0"]  # no UUID known: as given
    assert Launch.render({}, DEVICES).gpus is None  # any GPU


@pytest.mark.parametrize(
    "now, own, required",
    [
        ({"memory_limit_mb": 4096, "devices": "auto", "gpu_count": 1}, None, False),
        ({"memory_limit_mb": 2048, "devices": "auto", "gpu_count": 1}, None, True),
        ({"memory_limit_mb": 4096, "devices": [GPU1], "gpu_count": 1}, None, True),
    ],
    ids=["same", "other-cap", "placed-gpu-named"],
)
def test_a_restart_is_required_when_the_policy_now_differs(now, own, required):
    """Placed GPUs compare as "auto": the policy asked for placement, not for those GPUs."""
    launch = placed_start()
    assert launch.restart_required(Launch.render(now, DEVICES), own) is required


def test_a_fallback_start_requires_a_restart_only_once_the_notebooks_policy_changed():
    """A restart would fall back the same way until the notebook's own policy changes."""
    launch = placed_start(error="could not", refused={"devices": "auto"})
    anything = Launch.render({"memory_limit_mb": 1}, DEVICES)
    assert launch.restart_required(anything, {"devices": "auto"}) is False
    assert launch.restart_required(anything, {"devices": []}) is True


def applied_schema() -> dict:
    """The spec's ``applied`` object (Kernel.applied), with the spec's components to refer to."""
    spec = yaml.safe_load(files("jupyter_tfgpu.server.api").joinpath("openapi.yaml").read_text())
    applied = spec["components"]["schemas"]["Kernel"]["properties"]["applied"]
    return {**applied, "components": spec["components"]}


def test_the_json_is_the_openapi_applied_schema():
    """Every member's keys are properties of the spec's ``applied``, and every property there
    (the policy fields aside) is written by some launch; each launch validates."""
    schema = applied_schema()
    launches = [
        placed_start(error="could not"),
        placed_start(enforcement=COOPERATIVE),
        placed_start().applied_in_process(Launch.render({}, DEVICES, kernel_id="k1"), 200.0),
        Launch.render({"memory_limit_mb": 300, "devices": [0]}, DEVICES, RESERVE, kernel_id="k"),
    ]
    written = set()
    for launch in launches:
        document = launch.to_json()
        Draft202012Validator(schema).validate(document)
        written |= set(document) - set(FIELDS)
    assert written == set(schema["properties"]) - set(FIELDS)

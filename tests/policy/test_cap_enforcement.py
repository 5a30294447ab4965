"""How a cap is enforced: the levels' one definition, per GPU and overall (the weakest GPU)."""

from __future__ import annotations

import dataclasses

import pytest

from jupyter_tfgpu.policy.cap_enforcement import (
    LEVEL_NAMES,
    LEVELS,
    MECHANISMS,
    CapEnforcement,
    GpuEnforcement,
    level,
    weakest,
)

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-2222-3333-4444-555555555555"


def test_the_levels_are_driver_framework_none_strongest_first_each_said_in_full():
    """One definition per level: the UI's words, what it means, stops and does not stop."""
    assert LEVEL_NAMES == ("driver", "framework", "none")
    assert [lv.label for lv in LEVELS] == ["hard cap", "cooperative", "no cap"]
    for each in LEVELS:
        assert each.meaning and each.stops and each.does_not_stop
    # A driver level is only ever said of a mechanism a GPU run has shown holding.
    assert "docs/gpu-validation.md" in level("driver").meaning
    assert set(MECHANISMS) == {"nvml_memory_limit", "mps", "framework_settings"}


def test_the_weakest_level_wins():
    assert weakest(["driver", "framework", "driver"]) == "framework"
    assert weakest(["driver", "none"]) == "none"
    assert weakest([]) is None


def test_a_kernel_is_as_strong_as_its_weakest_gpu_whose_reason_it_gives():
    """Overall: the first GPU at the weakest level gives the mechanism and the reason."""
    # Given one GPU held by the driver and one by framework settings only
    gpus = [
        GpuEnforcement(GPU0, "driver", "nvml_memory_limit", None),
        GpuEnforcement(GPU1, "framework", "framework_settings", "the limit could not be set"),
    ]
    # When the kernel's enforcement is made from them
    enforcement = CapEnforcement.of(gpus)
    # Then it is the weaker one's, said in the UI's words, with both GPUs kept
    assert (enforcement.level, enforcement.mechanism, enforcement.reason) == (
        "framework", "framework_settings", "the limit could not be set",
    )  # fmt: skip
    assert enforcement.label == "cooperative"
    assert [g["gpu"] for g in enforcement.to_json()["gpus"]] == [GPU0, GPU1]
    assert enforcement.summary_json() == {
        "level": "framework",
        "mechanism": "framework_settings",
        "reason": "the limit could not be set",
    }


def test_a_kernel_without_gpus_says_its_level_in_words():
    enforcement = CapEnforcement.without_gpus("framework", "framework_settings", "CPU only")
    assert enforcement.to_json()["gpus"] == []
    with pytest.raises(ValueError, match="without_gpus"):
        CapEnforcement.of([])


@pytest.mark.parametrize(
    "args, message",
    [
        (("fast", None, "why"), "level 'fast'"),
        (("framework", "cgroups", "why"), "mechanism 'cgroups'"),
        (("framework", "framework_settings", None), "reason"),
        (("driver", "mps", "why"), "reason"),
    ],
    ids=["unknown-level", "unknown-mechanism", "framework-without-reason", "driver-with-reason"],
)
def test_a_level_is_one_of_the_table_and_only_driver_goes_without_a_reason(args, message):
    with pytest.raises(ValueError, match=message):
        GpuEnforcement(GPU0, *args)


def test_enforcement_is_frozen():
    enforcement = CapEnforcement.without_gpus("none", None, "no cap")
    with pytest.raises(dataclasses.FrozenInstanceError):
        enforcement.level = "driver"  # type: ignore[misc]

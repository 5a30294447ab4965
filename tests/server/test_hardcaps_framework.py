"""Mode off, and what every mechanism falls back on: how framework settings hold a kernel's cap."""

from __future__ import annotations

import pytest

from jupyter_tfgpu.gpu import DeviceInfo, GiB
from jupyter_tfgpu.policy.launch import Launch
from jupyter_tfgpu.server.hardcaps.framework import FrameworkSettings, framework_enforcement
from jupyter_tfgpu.server.hardcaps.mechanism import StartingKernel
from jupyter_tfgpu.server.hardcaps.verified import driver_branch, driver_level
from jupyter_tfgpu.server.hardcaps import verified

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-2222-3333-4444-555555555555"
DEVICES = (
    DeviceInfo(index=0, uuid=GPU0, name="NVIDIA A100", memory_total=80 * GiB),
    DeviceInfo(index=1, uuid=GPU1, name="NVIDIA A100", memory_total=80 * GiB, lost=True),
)


def kernel(policy: dict, language: str | None = "python", devices=DEVICES) -> StartingKernel:
    return StartingKernel("k1", Launch.render(policy, list(devices)), language, tuple(devices))


def test_a_python_kernel_with_a_cap_is_held_by_its_framework_settings_on_each_gpu():
    """Level framework per GPU it may use (a lost GPU is not one), the reason saying why."""
    enforcement = framework_enforcement(kernel({"memory_limit_mb": 4096}))
    assert (enforcement.level, enforcement.mechanism) == ("framework", "framework_settings")
    assert [g.gpu for g in enforcement.gpus] == [GPU0]
    assert "code in the kernel can undo them" in enforcement.reason
    assert "CuPy" in enforcement.reason


def test_a_kernel_without_a_cap_has_none():
    enforcement = framework_enforcement(kernel({"devices": [0]}))
    assert (enforcement.level, enforcement.mechanism) == ("none", None)
    assert enforcement.reason.startswith("no memory cap")
    assert [g.gpu for g in enforcement.gpus] == [GPU0]


@pytest.mark.parametrize("language", ["R", "julia"])
def test_a_non_python_kernels_own_allocations_are_reached_by_no_setting(language):
    """Level none: the environment's variables reach the Python processes it starts, but the
    in-process settings never reach its own allocations."""
    enforcement = framework_enforcement(kernel({"memory_limit_mb": 4096}, language))
    assert (enforcement.level, enforcement.mechanism) == ("none", None)
    assert enforcement.reason.startswith(f"a {language} kernel: the framework settings reach")


def test_a_kernelspec_without_a_language_counts_as_python():
    assert framework_enforcement(kernel({"memory_limit_mb": 1}, None)).level == "framework"


def test_a_cpu_only_kernel_is_held_by_a_variable_it_could_change():
    enforcement = framework_enforcement(kernel({"devices": [], "memory_limit_mb": 4096}))
    assert (enforcement.level, enforcement.gpus) == ("framework", ())
    assert enforcement.reason.startswith("CPU only: CUDA_VISIBLE_DEVICES hides every GPU")


def test_a_server_that_knows_no_gpu_says_so():
    enforcement = framework_enforcement(kernel({"memory_limit_mb": 4096}, devices=()))
    assert (enforcement.level, enforcement.gpus) == ("framework", ())
    assert enforcement.reason.startswith("no GPU is known to this server")


def test_what_a_failed_mechanism_says_comes_first_in_every_reason():
    enforcement = framework_enforcement(kernel({"memory_limit_mb": 4096}), "the mps limit could not be set")
    assert all(g.reason.startswith("the mps limit could not be set; the framework settings")
               for g in enforcement.gpus)  # fmt: skip


def test_the_off_mechanism_sets_nothing_and_is_always_running():
    mechanism = FrameworkSettings()
    prepared = mechanism.prepare(kernel({"memory_limit_mb": 4096}))
    assert (dict(prepared.env), prepared.wrapper) == ({}, ())
    assert prepared.enforcement.level == "framework"
    assert mechanism.status().to_json("off")["state"] == "running"


# -- the rule of level driver ---------------------------------------------------------------------


def test_a_driver_limit_no_gpu_run_has_shown_is_framework_saying_so():
    """VERIFIED is empty: nothing has run on a GPU."""
    assert verified.VERIFIED == ()
    level, reason = driver_level("nvml_memory_limit", "615.71.09", None)
    assert level == "framework"
    assert reason == (
        "the driver limit is set (nvml_memory_limit), but no GPU run has shown it holding on "
        "driver branch R615 yet (docs/gpu-validation.md)"
    )


def test_a_driver_limit_the_kernel_can_lift_is_framework_even_when_verified(monkeypatch):
    monkeypatch.setattr(verified, "VERIFIED", (verified.Verified("mps", "615", "MPS, H200"),))
    level, reason = driver_level("mps", "615.71.09", "code in the kernel can lift it")
    assert (level, reason) == ("framework", "code in the kernel can lift it")


def test_a_verified_limit_the_kernel_cannot_lift_is_driver_on_that_branch_only(monkeypatch):
    monkeypatch.setattr(
        verified, "VERIFIED", (verified.Verified("nvml_memory_limit", "615", "NVML limits, H200"),)
    )
    assert driver_level("nvml_memory_limit", "615.71.09", None) == ("driver", None)
    assert driver_level("nvml_memory_limit", "620.10", None)[0] == "framework"
    assert driver_level("nvml_memory_limit", None, None)[1].endswith(
        "on this driver (its version is unknown) yet (docs/gpu-validation.md)"
    )


def test_a_driver_branch_is_its_major_version():
    assert [driver_branch(v) for v in ("615.71.09", "550", "", None, "x.1")] == [
        "615", "550", None, None, None,
    ]  # fmt: skip

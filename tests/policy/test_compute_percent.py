"""The compute share under MPS (``compute_percent``): validated, and rendered into the variable
CUDA's MPS client reads (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``)."""

from __future__ import annotations

import pytest

from jupyter_tfgpu.gpu import DeviceInfo
from jupyter_tfgpu.in_kernel.policy_fields import field_named
from jupyter_tfgpu.policy import PolicyError, render_env, validate_policy

DEVICES = [DeviceInfo(index=0, uuid="GPU-0", name="T4", memory_total=16 * 2**30)]


@pytest.mark.parametrize("value", [0, 101, -5, 2.5, "50", True])
def test_a_share_outside_1_to_100_is_refused_naming_the_field(value):
    # Given a compute share that is not a whole percentage from 1 to 100
    # When the server validates it / Then it refuses it, naming the field
    with pytest.raises(PolicyError) as refused:
        validate_policy({"compute_percent": value})
    assert "compute_percent" in str(refused.value)


@pytest.mark.parametrize("value", [1, 50, 100])
def test_a_whole_percentage_is_kept(value):
    assert validate_policy({"compute_percent": value}) == {"compute_percent": value}


def test_a_share_renders_into_the_mps_client_variable():
    # Given a policy with half the GPU's SMs
    # When it is rendered for a kernel
    env = render_env({"compute_percent": 50}, DEVICES)
    # Then the MPS client variable carries it
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"


def test_without_a_share_the_variable_is_left_as_inherited():
    # Given no compute share, and a server environment that sets one
    inherited = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40"}
    # When rendered / Then the variable is not touched (the kernel inherits the server's value)
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in render_env({}, DEVICES, inherited)


@pytest.mark.parametrize(
    "inherited, asked, rendered",
    [("40", 50, "40"), ("40", 30, "30"), ("not a number", 30, "30"), ("0", 30, "30")],
)
def test_the_servers_own_share_stays_a_ceiling(inherited, asked, rendered):
    # Given a share in the server's own environment (an admin's, or a platform's)
    env = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": inherited}
    # When a policy asks for another / Then the kernel gets the lower of the valid ones
    assert render_env({"compute_percent": asked}, DEVICES, env)[
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
    ] == rendered


def test_the_magic_has_an_option_for_it():
    field = field_named("compute_percent")
    assert field.option == "compute-percent"
    assert field.parse("25") == 25

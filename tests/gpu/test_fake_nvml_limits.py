"""The fake NVML's memory limits on cgroups behave as nvidia-ml-py 13.615.71's are documented."""

from __future__ import annotations

import os

import pynvml
import pytest

from tests.fake_nvml_limits import FakeOutOfMemory
from tests.fake_pynvml import FakeGpu, FakeMig, FakeNvml

GiB = 2**30


def started(**kwargs) -> FakeNvml:
    """A fake on an R615 driver, root, with nvmlInit already called."""
    kwargs.setdefault("driver_version", "615.71.09")
    kwargs.setdefault("privileged", True)
    fake = FakeNvml(**kwargs)
    fake.module.nvmlInit()
    return fake


def cgroup(tmp_path, name: str = "kernel-1", dmem: bool = True) -> str:
    """A cgroup folder, with dmem's files or without."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / "cgroup.procs").write_text("")
    if dmem:
        (folder / "dmem.max").write_text("")
    return str(folder)


def set_limits(fake: FakeNvml, folder: str, soft: int, hard: int, gpu: int = 0) -> None:
    """Set limits the way the binding's callers do: its own struct, nameSpace as bytes."""
    nvml = fake.module
    limits = nvml.c_nvmlSetMemoryLimits_v1_t()
    limits.nameSpace, limits.softLimit, limits.hardLimit = folder.encode(), soft, hard
    nvml.nvmlDeviceSetMemoryLimits_v1(nvml.nvmlDeviceGetHandleByIndex(gpu), limits)


def get_limits(fake: FakeNvml, folder: str, gpu: int = 0):
    """Read limits back into the binding's Get struct."""
    nvml = fake.module
    limits = nvml.c_nvmlGetMemoryLimits_v1_t()
    limits.nameSpace = folder.encode()
    nvml.nvmlDeviceGetMemoryLimits_v1(nvml.nvmlDeviceGetHandleByIndex(gpu), limits)
    return limits


def test_the_structs_and_calls_are_the_bindings_own():
    """The fake hands out nvidia-ml-py's structs and its constant, unchanged."""
    fake = started()
    assert fake.module.c_nvmlSetMemoryLimits_v1_t is pynvml.c_nvmlSetMemoryLimits_v1_t
    assert fake.module.c_nvmlGetMemoryLimits_v1_t is pynvml.c_nvmlGetMemoryLimits_v1_t
    assert fake.module.NVML_DEVICE_MEMORY_LIMIT_MAX == 2**64 - 1
    assert [f for f, _ in pynvml.c_nvmlSetMemoryLimits_v1_t._fields_] == [
        "nameSpace", "softLimit", "hardLimit"
    ]


def test_a_limit_set_per_gpu_and_cgroup_reads_back_with_what_the_cgroup_uses(tmp_path):
    # Given two GPUs and a cgroup whose process holds 1 GiB on GPU 1
    fake = started(gpus=[FakeGpu(), FakeGpu()])
    folder = cgroup(tmp_path)
    fake.cgroup_of = lambda pid: folder if pid == 42 else None
    fake.allocate(1, 42, 1 * GiB)
    # When a 4 GiB hard limit is set on GPU 1 only
    set_limits(fake, folder, 0, 4 * GiB, gpu=1)
    # Then GPU 1 reads it back with the usage; GPU 0 has none (0, MAX)
    on1, on0 = get_limits(fake, folder, gpu=1), get_limits(fake, folder, gpu=0)
    assert (on1.softLimit, on1.hardLimit, on1.currentUsed) == (0, 4 * GiB, 1 * GiB)
    assert (on0.softLimit, on0.hardLimit) == (0, pynvml.NVML_DEVICE_MEMORY_LIMIT_MAX)


def test_clearing_is_soft_zero_hard_max_and_removing_the_cgroup_clears_too(tmp_path):
    fake = started()
    first, second = cgroup(tmp_path, "a"), cgroup(tmp_path, "b")
    set_limits(fake, first, 0, GiB)
    set_limits(fake, second, 0, GiB)
    # When one is cleared the documented way and the other's folder is removed
    set_limits(fake, first, 0, pynvml.NVML_DEVICE_MEMORY_LIMIT_MAX)
    for name in os.listdir(second):
        os.remove(os.path.join(second, name))
    os.rmdir(second)
    # Then neither is kept
    assert fake.limit_on(0, first) is None and fake.limit_on(0, second) is None
    assert fake.memory_limits == {}


def test_an_allocation_past_the_hard_limit_is_refused_for_the_cgroup_as_a_whole(tmp_path):
    # Given a kernel's cgroup with two processes (the kernel and a child) and a 4 GiB limit
    fake = started()
    folder = cgroup(tmp_path)
    fake.cgroup_of = lambda pid: folder if pid in (10, 11) else str(tmp_path)
    set_limits(fake, folder, 0, 4 * GiB)
    fake.allocate(0, 10, 3 * GiB)
    # When the child asks for 2 GiB more, the cgroup would hold 5 GiB: refused
    with pytest.raises(FakeOutOfMemory):
        fake.allocate(0, 11, 2 * GiB)
    # Then what it could have is still there, and a process outside the cgroup is not held
    fake.allocate(0, 11, 1 * GiB)
    fake.allocate(0, 99, 20 * GiB)
    assert fake.cgroup_used(0, folder) == 4 * GiB


def test_a_limit_on_a_parent_holds_its_children_too(tmp_path):
    fake = started()
    parent = cgroup(tmp_path, "tfgpu")
    child = cgroup(tmp_path, "tfgpu/kernel-1")
    fake.cgroup_of = lambda pid: child
    set_limits(fake, parent, 0, GiB)
    with pytest.raises(FakeOutOfMemory):
        fake.allocate(0, 5, 2 * GiB)


@pytest.mark.parametrize("driver", ["550.54.15", "610.1"])
def test_drivers_before_615_lack_the_calls(tmp_path, driver):
    fake = started(driver_version=driver)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        set_limits(fake, cgroup(tmp_path), 0, GiB)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        get_limits(fake, str(tmp_path))


def test_setting_needs_root_and_reading_does_not(tmp_path):
    fake = started(privileged=False)
    folder = cgroup(tmp_path)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        set_limits(fake, folder, 0, GiB)
    assert get_limits(fake, folder).hardLimit == pynvml.NVML_DEVICE_MEMORY_LIMIT_MAX


def test_a_cgroup_without_dmem_files_or_no_folder_is_not_found(tmp_path):
    fake = started()
    with pytest.raises(pynvml.NVMLError_NotFound):
        set_limits(fake, cgroup(tmp_path, dmem=False), 0, GiB)
    with pytest.raises(pynvml.NVMLError_NotFound):
        set_limits(fake, str(tmp_path / "absent"), 0, GiB)


def test_a_mig_handle_is_refused(tmp_path):
    fake = started(gpus=[FakeGpu(mig_enabled=True, mig_devices=[FakeMig()])])
    nvml = fake.module
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    limits = nvml.c_nvmlSetMemoryLimits_v1_t(cgroup(tmp_path).encode(), 0, GiB)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceSetMemoryLimits_v1(mig, limits)


def test_the_struct_goes_by_reference_as_in_the_binding(tmp_path):
    """A dict or the wrong struct fails as ctypes would, before any C call."""
    fake = started()
    handle = fake.module.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(TypeError, match="ctypes instance"):
        fake.module.nvmlDeviceSetMemoryLimits_v1(handle, {"nameSpace": "x"})
    with pytest.raises(TypeError):
        fake.module.nvmlDeviceSetMemoryLimits_v1(handle, pynvml.c_nvmlGetMemoryLimits_v1_t())


def test_a_soft_limit_above_the_hard_one_is_an_invalid_argument(tmp_path):
    fake = started()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        set_limits(fake, cgroup(tmp_path), 2 * GiB, GiB)


def test_before_init_the_calls_say_uninitialized(tmp_path):
    fake = FakeNvml(driver_version="615.71.09", privileged=True)
    limits = pynvml.c_nvmlGetMemoryLimits_v1_t(b"/x")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.module.nvmlDeviceGetMemoryLimits_v1(None, limits)

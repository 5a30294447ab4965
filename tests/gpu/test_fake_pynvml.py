"""The fake pynvml behaves like nvidia-ml-py where the NVML backend depends on it."""

import sys

import pynvml
import pytest

from tests.fake_pynvml import FakeGpu, FakeMig, FakeNvml, FakeProcess


def started(**kwargs) -> FakeNvml:
    """A fake with nvmlInit already called."""
    fake = FakeNvml(**kwargs)
    fake.module.nvmlInit()
    return fake


def test_lost_and_unknown_gpus_raise_the_real_classes():
    # Given two GPUs, one fallen off the bus and one in an unknown state
    fake = started(gpus=[FakeGpu(), FakeGpu()])
    nvml = fake.module
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    fake.gpus[0].lost = True
    fake.gpus[1].unknown = True

    # When / Then each call on their handles raises nvidia-ml-py's own subclass
    with pytest.raises(pynvml.NVMLError_GpuIsLost) as lost:
        nvml.nvmlDeviceGetMemoryInfo(handles[0])
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetUtilizationRates(handles[1])
    assert isinstance(lost.value, pynvml.NVMLError)
    assert str(lost.value) == "GPU is lost"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
    ],
)
def test_init_error_carries_the_real_class_and_message(code, message):
    # Given a host without the library or without the driver
    fake = FakeNvml(init_error=code)

    # When NVML is initialised
    with pytest.raises(pynvml.NVMLError) as err:
        fake.module.nvmlInit()

    # Then the error is the mapped subclass, says what nvidia-ml-py says, and nothing is up
    assert type(err.value) is pynvml.nvmlExceptionClass(code)
    assert str(err.value) == message
    assert not fake.initialized


def test_calls_before_init_raise_uninitialized():
    # Given a fake nobody initialised
    fake = FakeNvml()

    # When / Then
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.module.nvmlDeviceGetCount()


def test_missing_symbols_raise_function_not_found_like_the_binding():
    # Given an old driver without the v3 process list and the v2 memory info
    missing = {"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetMemoryInfo_v2"}
    fake = started(missing_symbols=missing)
    nvml = fake.module
    handle = nvml.nvmlDeviceGetHandleByIndex(0)

    # When / Then the versioned functions raise FunctionNotFound, their older twins still answer
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
    assert nvml.nvmlDeviceGetComputeRunningProcesses_v2(handle) == []
    assert nvml.nvmlDeviceGetMemoryInfo(handle).total == 80 * 2**30
    # and the unversioned alias raises what @throwOnVersionMismatch raises in the real binding
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        nvml.nvmlDeviceGetComputeRunningProcesses(handle)


def test_latency_is_counted_in_call_time_and_calls_are_counted():
    # Given a slow PCIe counter
    fake = started(latency={"nvmlDeviceGetPcieThroughput": 0.02})
    handle = fake.module.nvmlDeviceGetHandleByIndex(0)
    fake.reset_counters()

    # When it is read twice
    for counter in (pynvml.NVML_PCIE_UTIL_TX_BYTES, pynvml.NVML_PCIE_UTIL_RX_BYTES):
        fake.module.nvmlDeviceGetPcieThroughput(handle, counter)

    # Then both calls and their sleep are on the books
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 2
    assert fake.call_time >= 0.04


def test_installed_module_serves_runtime_changes(monkeypatch):
    # Given the fake installed as pynvml
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    import pynvml as nvml

    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)

    # When a process starts after the handle was taken, with its memory not available
    fake.gpus[0].processes.append(FakeProcess(pid=1234, used_memory=None))

    # Then it is listed the way the binding lists it
    (proc,) = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    assert (proc.pid, proc.usedGpuMemory, proc.gpuInstanceId) == (1234, None, 0xFFFFFFFF)
    assert nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM) == 1410


def test_mig_slots_and_handles():
    # Given a GPU in MIG mode with one instance in slot 0 and slot 1 empty
    fake = started(gpus=[FakeGpu(mig_enabled=True, mig_devices=[FakeMig(memory_used=2**30)])])
    nvml = fake.module
    parent = nvml.nvmlDeviceGetHandleByIndex(0)

    # When the slots are walked
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)

    # Then the MIG handle answers memory and UUID calls, and not sensor calls
    assert nvml.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert nvml.nvmlDeviceIsMigDeviceHandle(mig)
    assert nvml.nvmlDeviceGetUUID(mig).startswith("MIG-")
    assert nvml.nvmlDeviceGetMemoryInfo(mig).used == 2**30
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTemperature(mig, nvml.NVML_TEMPERATURE_GPU)


def test_injected_fault_fails_the_call_n_times_then_goes():
    # Given a fault injected for two calls on GPU 1's temperature only
    fake = started(gpus=[FakeGpu(temperature=40), FakeGpu(temperature=50)])
    nvml = fake.module
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    fake.inject("nvmlDeviceGetTemperature", pynvml.NVML_ERROR_TIMEOUT, times=2, gpu=1)

    # When / Then GPU 0 answers, GPU 1 raises the real Timeout class twice, then answers
    assert nvml.nvmlDeviceGetTemperature(handles[0], nvml.NVML_TEMPERATURE_GPU) == 40
    for _ in range(2):
        with pytest.raises(pynvml.NVMLError_Timeout):
            nvml.nvmlDeviceGetTemperature(handles[1], nvml.NVML_TEMPERATURE_GPU)
    assert nvml.nvmlDeviceGetTemperature(handles[1], nvml.NVML_TEMPERATURE_GPU) == 50
    assert fake.faults_raised == 2


def test_injected_fault_stays_until_cleared_and_may_be_any_exception():
    # Given a binding that raises a non-NVML error on init until told otherwise
    fake = FakeNvml()
    fake.inject("nvmlInit", OSError("cannot map libnvidia-ml"))

    # When / Then it keeps raising it, and once cleared init works
    for _ in range(3):
        with pytest.raises(OSError):
            fake.module.nvmlInit()
    fake.clear("nvmlInit")
    fake.module.nvmlInit()
    assert fake.initialized
    assert fake.faults_raised == 3

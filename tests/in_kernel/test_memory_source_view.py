"""What ``%tfgpu`` (and the widgets, through the same helper) say of where this kernel's GPU
memory figure comes from: NVML, the kernel's own report, or unknown right now."""

from __future__ import annotations

import html

from jupyter_tfgpu.in_kernel.notices import memory_source_note
from jupyter_tfgpu.in_kernel.views import StatusView

GIB = 2**30


def status(gpu_memory: dict) -> dict:
    """A kernel/status answer with one GPU and this kernel's ``gpu_memory``."""
    gpu = {"index": 0, "uuid": "GPU-0", "name": "A100", "memory": {"used": 4 * GIB, "total": 80 * GIB}}
    kernel = {"id": "k1", "notebook": "nb.ipynb", "gpu_memory": gpu_memory, "policy": {}}
    return {"available": True, "gpus": [gpu], "kernel": kernel}


def per_gpu(source: str, used: int | None = 3 * GIB) -> list[dict]:
    """This kernel's row on GPU 0."""
    return [{"index": 0, "uuid": "GPU-0", "used_memory": used, "source": source, "pids": []}]


def test_a_figure_from_the_kernels_own_report_is_said_so():
    """Its own report: the GPU's cell and a note say so, calmly, in text and HTML."""
    # Given the server's figure for this kernel comes from its own report
    view = StatusView(status({"total": 3 * GIB, "source": "kernel_report", "unknown": None,
                              "per_gpu": per_gpu("kernel_report")}))  # fmt: skip
    # When it is shown / Then both forms say where the figure comes from
    for text in (view.text(), html.unescape(view.html())):
        assert "3.0 GiB (own report)" in text
        assert "GPU memory on GPU 0 is its frameworks' own report" in text
        assert "leaves out the CUDA context" in text


def test_an_unknown_figure_is_a_warning_with_the_reason():
    """Unknown now: the reason is shown as a warning."""
    why = "GPU 0's process list could not be read (NVMLError_Timeout: Timeout)"
    kernel = {"gpu_memory": {"total": 0, "source": None, "unknown": why, "per_gpu": []}}
    said, warning = memory_source_note(kernel)
    assert warning is True
    assert said == f"This kernel's GPU memory is unknown right now: {why}."
    assert why in StatusView(status(kernel["gpu_memory"])).text()


def test_nvml_figures_need_no_note():
    """NVML's figure, or an answer from an older server without the fields: nothing to add."""
    nvml = {"total": 3 * GIB, "source": "nvml", "unknown": None, "per_gpu": per_gpu("nvml")}
    assert memory_source_note({"gpu_memory": nvml}) is None
    assert memory_source_note({"gpu_memory": {"total": 0, "per_gpu": []}}) is None
    assert memory_source_note(None) is None
    assert "(own report)" not in StatusView(status(nvml)).text()


def test_a_cap_that_leaves_no_room_for_the_context_is_a_warning():
    """The launch document's note, when the cap is at or below the context, is shown."""
    note = (
        "memory_limit_mb 300 is at or below the 550 MiB this GPU needs for the CUDA context and "
        "libraries alone: any GPU use passes the cap"
    )
    data = status({"total": 0, "per_gpu": []})
    data["kernel"]["applied"] = {"memory_limit_mb": 300, "memory_limit_note": note}
    assert f"This kernel's cap: {note}." in StatusView(data).text()
    data["kernel"]["applied"] = {"memory_limit_mb": 4096, "framework_limit_mb": 3546}
    assert "This kernel's cap" not in StatusView(data).text()


CAP = {"memory_limit_mb": 4096, "framework_limit_mb": 3584, "context_reserve_mb": 512}


def shown(applied: dict | None) -> list[str]:
    """The text and HTML forms of %tfgpu for a kernel that started with ``applied``."""
    data = status({"total": 0, "per_gpu": []})
    data["kernel"]["applied"] = applied
    view = StatusView(data)
    return [view.text(), html.unescape(view.html())]


def test_the_cap_says_what_the_frameworks_get_and_how_the_context_was_found():
    """As the lab's policy section: the cap, the frameworks' limit, the reserve and its source."""
    # Given kernels started with a cap, the reserve measured, a starting value, or simulated
    measured = dict(CAP, context_reserve_source="measured",
                    context_reserve_measured_on="NVIDIA H200, driver 580.159.04")  # fmt: skip
    starting = dict(CAP, context_reserve_source="starting value")
    simulated = dict(CAP, framework_limit_mb=4096, context_reserve_mb=0,
                     context_reserve_source="simulated")  # fmt: skip
    # When %tfgpu shows them / Then each says so, in text and HTML
    for said in shown(measured):
        assert (
            "This kernel runs with a cap of 4 GiB per GPU (frameworks get 3584 MiB; 512 MiB left "
            "for the CUDA context, measured on NVIDIA H200, driver 580.159.04)." in said
        )
    for said in shown(starting):
        assert (
            "This kernel runs with a cap of 4 GiB per GPU (frameworks get 3584 MiB; 512 MiB left "
            "for the CUDA context, starting value)." in said
        )
    for said in shown(simulated):
        assert (
            "This kernel runs with a cap of 4 GiB per GPU (simulated GPUs: no CUDA context, "
            "frameworks get all of it)." in said
        )


def test_the_cap_line_without_the_frameworks_limit_or_without_a_cap():
    """A launch from an older server names the cap alone; no cap, no line; a cap below the
    context is named, and warned of."""
    for said in shown({"memory_limit_mb": 4096}):
        assert "This kernel runs with a cap of 4 GiB per GPU." in said
    for applied in (None, {}, {"memory_limit_mb": None, "memory_growth": True}):
        assert all("runs with a cap" not in said for said in shown(applied))
    note = "memory_limit_mb 300 is at or below the 550 MiB this GPU needs"
    low = dict(CAP, memory_limit_mb=300, framework_limit_mb=300, memory_limit_note=note)
    for said in shown(low):
        assert "This kernel runs with a cap of 300 MiB per GPU." in said
        assert f"This kernel's cap: {note}." in said

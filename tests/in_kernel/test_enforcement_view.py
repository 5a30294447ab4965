"""How a kernel's cap is enforced, as %tfgpu and the GPU panel say it: the level in the lab's
words, what holds the cap and why it is not hard, from the server's view or the kernel's launch."""

from __future__ import annotations

import html
import re
import time

import pytest

from jupyter_tfgpu.in_kernel.notices import (
    LEVEL_LABELS,
    MECHANISM_WORDS,
    enforcement_line,
    enforcement_of,
)
from jupyter_tfgpu.in_kernel.views import MUTED, WARN, StatusView
from jupyter_tfgpu.in_kernel.widgets import GPUPanel
from jupyter_tfgpu.policy.cap_enforcement import LEVELS, MECHANISMS

SETTINGS = (
    "the framework settings (TensorFlow, PyTorch, JAX) hold it: code in the kernel can undo "
    "them, and allocators that read none of them (CuPy, Numba, raw CUDA) pass them"
)
MPS_LIFTABLE = (
    "MPS limits this kernel in the driver, but code in the kernel can lift them through its own "
    "environment before CUDA starts"
)
NO_CAP = "no memory cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb"
COOPERATIVE = {"level": "framework", "mechanism": "framework_settings", "reason": SETTINGS}
MPS = {"level": "framework", "mechanism": "mps", "reason": MPS_LIFTABLE}
HARD = {"level": "driver", "mechanism": "nvml_memory_limit", "reason": None}
NONE = {"level": "none", "mechanism": None, "reason": NO_CAP}


def status_with(kernel: dict) -> dict:
    """A kernel/status answer: one GPU, and this kernel as given."""
    gpu = {
        "index": 0,
        "name": "Test GPU",
        "uuid": "GPU-test",
        "memory": {"total": 16 * 2**30, "used": 4 * 2**30, "free": 12 * 2**30},
        "utilization": {"gpu": 5, "memory": 0},
        "processes": [],
    }
    base = {"id": "k1", "notebook": "nb.ipynb", "gpu_memory": {"total": 0, "per_gpu": []}}
    return {
        "available": True,
        "timestamp": time.time(),
        "gpus": [gpu],
        "kernel": {**base, **kernel},
    }


def test_the_words_are_the_servers_levels_and_mechanisms():
    """The kernel side keeps its own copy (it imports nothing of the server): pinned here."""
    assert LEVEL_LABELS == {level.name: level.label for level in LEVELS}
    assert set(MECHANISM_WORDS) == set(MECHANISMS)


@pytest.mark.parametrize(
    "enforcement,said",
    [
        (HARD, "Hard cap, held by an NVML memory limit on the kernel's cgroup, set in the driver: "
               "the driver refuses any allocation past it, whatever the framework."),
        (COOPERATIVE, "Cooperative cap, held by the framework settings (TensorFlow, PyTorch, "
                      f"JAX). Not a hard cap: {SETTINGS}."),
        (MPS, f"Cooperative cap, held by an MPS memory limit, set in the driver. Not a hard cap: "
              f"{MPS_LIFTABLE}."),
        (NONE, "No cap: its policy sets no memory_limit_mb, and the admin no max_memory_mb."),
    ],
)  # fmt: skip
def test_each_level_is_said_as_the_lab_says_it(enforcement, said):
    """The level's name in the lab's words, what holds the cap, and why it is not hard."""
    assert enforcement_line(enforcement) == said


def test_the_servers_view_now_comes_first_then_the_launch_then_tfgpu_policy():
    """The server says the level now (a cap lowered since start is not driver any more); the
    launch says what the kernel started with; TFGPU_POLICY is that launch, in the kernel."""
    launch = {"memory_limit_mb": 4096, "enforcement": {**MPS, "gpus": []}}
    assert enforcement_of({"enforcement": COOPERATIVE, "applied": launch}, None) == COOPERATIVE
    assert enforcement_of({"applied": launch}, None) == MPS
    assert enforcement_of(None, launch) == MPS
    assert enforcement_of({"applied": None}, {"memory_limit_mb": 1}) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"level": "unbreakable", "mechanism": "mps", "reason": "x"},
        {"level": "framework", "mechanism": "magic", "reason": "x"},
        {"level": "framework", "mechanism": "mps", "reason": 3},
        {"level": "framework", "mechanism": "mps", "reason": None},
        {"level": "driver", "mechanism": "mps", "reason": "x" * 2000},
        "driver",
        None,
    ],
)
def test_a_launch_the_kernel_rewrote_into_nonsense_says_nothing(bad):
    """TFGPU_POLICY is the kernel's own to change: what is not a level the server could have
    written is not shown, rather than shown as if the server said it."""
    assert enforcement_of(None, {"enforcement": bad}) is None


def test_tfgpu_says_the_level_calmly_in_text_and_html():
    """%tfgpu: one calm line below the cap line, in both forms."""
    # Given this kernel started with a 4 GiB cap held by MPS, which code in it can lift
    status = status_with({"applied": {"memory_limit_mb": 4096}, "enforcement": MPS})
    view = StatusView(status, running=None, restart_required=False)
    said = enforcement_line(MPS)
    # Then the text says it after the cap
    text = view.text()
    assert said in text
    assert text.index("This kernel runs with a cap of 4 GiB per GPU") < text.index(said)
    # And the HTML says it calmly, not as a warning
    markup = view.html()
    assert f'<div style="{MUTED}">{html.escape(said)}</div>' in markup
    assert WARN not in markup


def test_tfgpu_says_the_level_from_tfgpu_policy_when_the_server_did_not_answer():
    """Without the server's view, the launch this process started with still says it."""
    running = {"memory_limit_mb": 4096, "enforcement": {**COOPERATIVE, "gpus": []}}
    view = StatusView({"local": True, "gpus": []}, running=running)
    assert enforcement_line(COOPERATIVE) in view.text()


def test_the_gpu_panel_says_the_level():
    """The ipywidgets panel's header says what %tfgpu says, calmly."""
    status = status_with({"applied": {"memory_limit_mb": 4096}, "enforcement": HARD})

    class Fixed:
        def status(self):
            return status, None

        def history(self, seconds):
            return None

    panel = GPUPanel(interval=60, source=Fixed())
    try:
        header = panel._header.value
    finally:
        panel.close()
    said = html.unescape(re.sub(r"<[^>]+>", "\n", header))
    assert enforcement_line(HARD) in said.splitlines()
    assert WARN not in header


def test_a_kernel_with_no_cap_is_said_to_have_none():
    """Level none: "No cap" and why, also without a cap line."""
    view = StatusView(status_with({"applied": {}, "enforcement": NONE}), restart_required=False)
    assert enforcement_line(NONE) in view.text()


def test_gpus_held_differently_are_each_said():
    """Per GPU, when the kernel's GPUs are not all held alike (the overall level is the weakest)."""
    # Given a kernel whose GPU 0 has an MPS limit and whose GPU 1 only framework settings
    gpus = [
        {"gpu": "GPU-test", **MPS},
        {"gpu": "1", **COOPERATIVE},
    ]
    launch = {"memory_limit_mb": 4096, "enforcement": {**MPS, "gpus": gpus}}
    status = status_with({"applied": launch, "enforcement": MPS})
    # Then %tfgpu says how each is held, GPUs by their index
    text = StatusView(status, restart_required=False).text()
    assert "Per GPU: GPU 0 cooperative (MPS), GPU 1 cooperative (framework settings)." in text
    # And alike, nothing more is said
    same = {"memory_limit_mb": 4096, "enforcement": {**MPS, "gpus": gpus[:1]}}
    assert (
        "Per GPU" not in StatusView(status_with({"applied": same}), restart_required=False).text()
    )

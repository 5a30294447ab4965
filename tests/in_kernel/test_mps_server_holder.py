"""The kernel-side views name NVIDIA's MPS server as what it is, not as "a process outside"."""

from __future__ import annotations

from jupyter_tfgpu.in_kernel.oom_view import explain
from jupyter_tfgpu.in_kernel.views import KernelsView
from tests.in_kernel.test_oom import GIB, gpu, oom, process, status


def mps_gpu():
    """GPU 0 under MPS: the MPS server (a process of no kernel) and this kernel, a client."""
    server = {**process(31, 6, kernel=False), "mps": "server"}
    mine = {**process(32, 4, mine=True), "mps": "client"}
    return gpu(0, 79, [server, mine])


def test_kernels_view_names_the_mps_server():
    # Given a GPU under MPS / When %tfgpu kernels shows who holds it
    text = KernelsView(status([mps_gpu()])).text()
    # Then the server's row says what it is
    [row] = [line for line in text.splitlines() if " 31 " in f" {line} "]
    assert "the MPS server" in row
    assert "outside" not in row


def test_the_out_of_memory_explanation_names_the_mps_server():
    # Given an out-of-memory error on a GPU under MPS / When it is explained
    text = explain(oom(), status([mps_gpu()])).text()
    # Then the server is named as the MPS server, its memory shown
    [line] = [line for line in text.splitlines() if " 31 " in f" {line} "]
    assert "the MPS server" in line
    assert f"{6 * GIB // GIB}.0 GiB" in line

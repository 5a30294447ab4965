"""NVLink data totals never decrease: per-link counters, a silent link kept, a reset rebased."""

from __future__ import annotations

import sys

import pynvml
import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.gpu.nvlink import NvlinkCounters
from tests.fake_pynvml import FakeGpu, FakeLink, FakeNvml

KIB = 1024


class Clock:
    """Seconds the fake's field-value timestamps are taken from."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def links(monkeypatch, clock) -> list[FakeLink]:
    """Two NVLink links of one GPU, each 1000 KiB out and 2000 KiB in so far."""
    links = [FakeLink(tx_kib=1000, rx_kib=2000), FakeLink(tx_kib=1000, rx_kib=2000)]
    fake = FakeNvml(gpus=[FakeGpu(nvlink=links)], timer=clock)
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return links


def read(backend: NvmlBackend, clock: Clock) -> dict:
    """One interconnect reading, one second after the last."""
    clock.now += 1
    return backend.read_pcie(0).nvlink.to_json()


def test_a_silent_link_keeps_its_last_count_in_the_total(links, clock):
    """One link not answering for a reading: the totals hold, the rate counts the other link."""
    # Given a backend that has read both links
    backend = NvmlBackend()
    backend.open()
    first = read(backend, clock)

    # When link 1 times out for one reading while link 0 carries 1 MiB out, then answers again
    links[1].error = pynvml.NVML_ERROR_TIMEOUT
    links[0].tx_kib += 1024
    silent = read(backend, clock)
    links[1].error = None
    links[1].tx_kib += 2048
    back = read(backend, clock)

    # Then the totals never dropped, and each rate came from links read both times
    assert first["tx_total"] == 2000 * KIB
    assert silent["tx_total"] == (2000 + 1024) * KIB
    assert silent["rx_total"] == first["rx_total"] == 4000 * KIB
    assert silent["tx"] == 1024 * KIB  # link 0 only
    assert back["tx_total"] == (2000 + 1024 + 2048) * KIB
    assert back["tx"] == 0  # link 1 missed the last reading: not in this rate


def test_a_counter_reset_is_rebased_so_the_total_never_drops(links, clock):
    """A link's counter going backwards (a driver reset) keeps what it had counted."""
    # Given a backend that has read both links
    backend = NvmlBackend()
    backend.open()
    read(backend, clock)

    # When link 0's counters restart from zero and count 300 KiB out
    links[0].tx_kib, links[0].rx_kib = 300, 0
    after = read(backend, clock)

    # Then the totals went on from where they were, and the rate is what came after the reset
    assert after["tx_total"] == (2000 + 300) * KIB
    assert after["rx_total"] == 4000 * KIB
    assert after["tx"] == 300 * KIB and after["rx"] == 0


def test_no_link_answering_keeps_the_totals(links, clock):
    """The field-value call failing as a whole: no rate, the totals of the last reading."""
    # Given a backend that has read both links
    fake = sys.modules["pynvml"].fake
    backend = NvmlBackend()
    backend.open()
    first = read(backend, clock)

    # When the field-value call times out
    fake.inject("nvmlDeviceGetFieldValues", pynvml.NVML_ERROR_TIMEOUT, times=1)
    failed = read(backend, clock)

    # Then
    assert failed["tx"] is None and failed["active"] is None
    assert (failed["tx_total"], failed["rx_total"]) == (first["tx_total"], first["rx_total"])


def test_counters_without_any_answer_are_unknown():
    """Before any link answered there are no totals (unknown, not 0)."""
    counters = NvlinkCounters()

    totals = counters.update(1_000_000, [None, None], [None, None])

    assert totals == (None, None, None, None)

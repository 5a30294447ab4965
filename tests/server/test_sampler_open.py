"""What the sampler says the moment it has opened the GPUs, before their first readings."""

from __future__ import annotations

import json
import sys

import pytest

from jupyter_tfgpu.gpu import NvmlBackend
from jupyter_tfgpu.server.sampling.sampler import Sampler
from tests.fake_pynvml import FakeGpu, FakeNvml


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    """Two GPUs, installed as ``pynvml``."""
    fake = FakeNvml(gpus=[FakeGpu(), FakeGpu()])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    return fake


def test_once_available_the_snapshot_lists_the_gpus(fake):
    """GET status and GET gpus never disagree: when the backend is available, the snapshot
    served lists its GPUs (their readings null until the first round), not none."""
    # Given a sampler that has opened the GPUs and taken no reading yet
    sampler = Sampler(NvmlBackend())
    assert sampler.open() and sampler.available
    # Then the snapshot it serves lists both GPUs, with what is known without a reading
    served = json.loads(sampler.latest.text)
    assert [gpu["index"] for gpu in served["gpus"]] == [0, 1]
    assert all(gpu["memory"]["total"] for gpu in served["gpus"])
    assert all(gpu["utilization"]["gpu"] is None for gpu in served["gpus"])
    sampler.stop()

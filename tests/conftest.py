"""Fixtures shared by the test folders: the fake NVML library, in place before the server starts.

A test module that wants its server to see fake GPUs overrides ``fake_nvml``; the server's
config (and so the server) is built only after the fake is installed as ``pynvml``. Modules
that do not override it get the real ``pynvml`` and the root conftest's config, unchanged.
"""

from __future__ import annotations

import sys

import pytest

from tests.fake_pynvml import FakeNvml


@pytest.fixture
def fake_nvml() -> FakeNvml | None:
    """The NVML library a test's server sees as ``pynvml``; None keeps the real one."""
    return None


@pytest.fixture
def installed_nvml(monkeypatch, fake_nvml) -> FakeNvml | None:
    """``fake_nvml`` installed as ``pynvml`` for the whole test (nothing when there is none)."""
    if fake_nvml is not None:
        monkeypatch.setitem(sys.modules, "pynvml", fake_nvml.module)
    return fake_nvml


@pytest.fixture
def jp_server_config(jp_server_config, installed_nvml):
    """The root conftest's config, built only once the fake NVML (if any) is in place."""
    return jp_server_config

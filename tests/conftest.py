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


@pytest.fixture
def tfgpu_wait_open() -> bool:
    """Whether ``jp_serverapp`` waits for the sampler's first open; False to see it under way."""
    return True


@pytest.fixture
def jp_serverapp(jp_serverapp, tfgpu_wait_open):
    """The server, once its sampler's first open of the GPU backend has an outcome.

    The open runs in the sampler's thread, so the server serves before the GPUs are known; tests
    read them from their first request, as a user a moment later would.
    """
    services = jp_serverapp.web_app.settings.get("tfgpu_services")
    if tfgpu_wait_open and services is not None:
        assert services.sampler.wait_opened(timeout=60), "the GPU backend's open did not end"
    return jp_serverapp

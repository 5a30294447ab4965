"""Test set-up shared by every test: a real jupyter_server with the extension enabled."""

import os

import pytest

pytest_plugins = ("pytest_jupyter.jupyter_server",)

# TensorFlow's CPU build prints CUDA-missing noise on stderr otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def jp_base_url():
    """A non-root base_url, so every route must honour it."""
    return "/shared-gpu/"


@pytest.fixture
def tfgpu_config():
    """Per-test TFGPU settings; override in a test module to change the backend."""
    return {"backend": "simulated", "sample_interval": 0.2, "history_seconds": 60}


@pytest.fixture
def jp_server_config(tfgpu_config):
    """Enable the extension with authentication required."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_tfgpu": True},
            "allow_unauthenticated_access": False,
        },
        "TFGPU": tfgpu_config,
    }

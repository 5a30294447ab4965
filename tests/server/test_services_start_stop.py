"""The services start what runs while the server serves, and stop all of it in one step: the
provisioner's context, the subscriptions, the metrics collector, the store's refresher, the
caps file's watcher and the periodic refresh of the kernels."""

from __future__ import annotations

import json
import threading

import pytest
from prometheus_client import REGISTRY

from jupyter_tfgpu.server.app import CONTENTS_ACTIONS, KERNEL_ACTIONS
from jupyter_tfgpu.server.kernels.provisioner import TFGPUProvisioner
from tests.kernel_helpers import poll

THREADS = ("tfgpu-policy-store", "tfgpu-caps-watcher")


@pytest.fixture
def caps_path(tmp_path):
    """A caps file the server watches."""
    path = tmp_path / "caps" / "tfgpu-caps.json"
    path.parent.mkdir(mode=0o755)
    path.write_text(json.dumps({"max_memory_mb": 4096}))
    path.chmod(0o644)
    return path


@pytest.fixture
def tfgpu_config(tfgpu_config, caps_path):
    """The root conftest's settings, with the caps file."""
    return {**tfgpu_config, "caps_file": str(caps_path)}


def tfgpu_series() -> set[str]:
    """The names of the series the services' collector adds to /metrics."""
    return {
        metric.name
        for metric in REGISTRY.collect()
        if metric.name.startswith(("tfgpu_gpu_", "tfgpu_sampler_"))
    }


def running_threads() -> set[str]:
    """The services' own threads that are alive."""
    return {t.name for t in threading.enumerate() if t.name in THREADS and t.is_alive()}


async def all_running() -> bool:
    """Every thread of the services is alive."""
    return running_threads() == set(THREADS)


async def none_running() -> bool:
    """No thread of the services is alive."""
    return not running_threads()


async def test_what_the_services_start_they_stop_in_one_step(jp_serverapp):
    """Started as a running server has them, then stopped: nothing of theirs is left."""
    # Given the services of a running server, its periodic refresh started
    app = jp_serverapp.web_app.settings["jupyter_tfgpu"]
    services = app.services
    await app.start_extension()
    sampler, changes = services.sampler, services.policies.changes
    assert TFGPUProvisioner.context is services.provisioner_context
    assert sampler._subscribers and changes._listeners  # no public count of either
    events = jp_serverapp.event_logger
    assert app._on_kernel_action in events._modified_listeners[KERNEL_ACTIONS]
    assert tfgpu_series()
    assert await poll(all_running, timeout=10)

    # When they are stopped
    await app.stop_extension()

    # Then the provisioner has no context, nothing is subscribed, /metrics has no collector of
    # theirs, and their threads end
    assert TFGPUProvisioner.context is None
    assert sampler._subscribers == [] and changes._listeners == []
    # and no kernel or contents event reaches them (jupyter_events has no public listing)
    assert app._on_kernel_action not in events._modified_listeners[KERNEL_ACTIONS]
    assert app._on_contents_action not in events._modified_listeners[CONTENTS_ACTIONS]
    assert tfgpu_series() == set()
    assert await poll(none_running, timeout=10)
    # And a second stop (the server's own, at the end of the test) finds nothing left to undo
    await services.stop()

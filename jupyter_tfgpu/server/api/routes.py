"""Every route of the extension, in one table (paths under ``{base_url}tfgpu/api/``)."""

from __future__ import annotations

from jupyter_server.utils import url_path_join

from jupyter_tfgpu.server.api.handlers import (
    ConfigHandler,
    EnforcementHandler,
    GpusHandler,
    HistoryHandler,
    KernelHandler,
    KernelsHandler,
    PoliciesHandler,
    PolicyHandler,
    StatusHandler,
    StreamHandler,
)
from jupyter_tfgpu.server.api.kernel_channel import KERNEL_ROUTES

API_PREFIX = "tfgpu/api"

ROUTES: list[tuple[str, type]] = [
    ("status", StatusHandler),
    ("gpus", GpusHandler),
    ("gpus/history", HistoryHandler),
    ("stream", StreamHandler),
    ("policies", PoliciesHandler),
    ("policies/(?P<path>.+)", PolicyHandler),
    ("kernels", KernelsHandler),
    ("kernels/(?P<kernel_id>[^/]+)", KernelHandler),
    ("config", ConfigHandler),
    ("enforcement", EnforcementHandler),
    *KERNEL_ROUTES,
]


def route_patterns() -> list[tuple[str, type]]:
    """Every route under ``tfgpu/api/`` (the extension app joins them onto base_url)."""
    return [(url_path_join(API_PREFIX, path), cls) for path, cls in ROUTES]

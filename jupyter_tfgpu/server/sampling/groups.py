"""The sampling groups, one row each: which fields, how often, at what cost, read by what.

A group is a set of GPU fields read together by one backend method, on its own cadence, since
their costs differ a hundredfold (memory in microseconds, process lists in milliseconds, PCIe in
tens of milliseconds). This table is the one place a group is named: the budget's shares and
freshness floors (``budget.py``), the scheduling and reading of a round, the settings' wiring
(``server/services.py``) and GET status's ``sampler.groups`` read it. Adding a group is adding
a row here, its ``TFGPU`` interval setting (``server/config.py``), and its method on the backends
(``gpu/backend.py``) with the reading it returns (``gpu/group_readings.py``); where its fields are
new, ``GpuReading`` gets them and ``snapshot.py`` puts them there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingGroup:
    """One row: a group of fields, its interval setting, its costs and the method that reads it."""

    name: str  # as GET status names it (``sampler.groups``)
    setting: str  # the TFGPU setting of its interval (seconds)
    default_interval: float  # that setting's default
    argument: str  # the Sampler's keyword argument for that interval
    # The snapshot fields it fills; a read that fails as a whole makes each of them null, with
    # the reason in the GPU's ``errors``.
    fields: tuple[str, ...]
    read: str  # the Backend method that reads it, for one GPU
    share: float  # its share of the driver-time budget (a share it leaves unused goes to others)
    typical_cost: float  # seconds per GPU until it has been measured
    # Freshness floor: the budget never stretches its interval past this many times the setting.
    max_stretch: float | None = None
    watched_only: bool = False  # read, and shown, only while a client watches (``watch_pcie``)
    # A failed read keeps the last reading, marked stale, instead of nulling it: an absent process
    # list would read as "no processes" (``process_list.py``).
    stale_when_failed: bool = False
    in_config: bool = False  # GET config shows its setting (the OpenAPI ``Config`` schema has it)


FAST = SamplingGroup(
    "fast",
    setting="sample_interval",
    default_interval=1.0,
    argument="interval",
    # and, on a MIG GPU, each instance's memory (null with no reason of its own)
    fields=("memory", "utilization"),
    read="read_fast",
    share=0.4,
    typical_cost=0.0001,
    # Memory and utilization must stay current: the sidebar, the stream and the enforcer read
    # them. When the floor holds the group above its share, the sampler says so.
    max_stretch=5.0,
    in_config=True,
)
PROCESSES = SamplingGroup(
    "processes",
    setting="process_interval",
    default_interval=5.0,
    argument="process_interval",
    fields=("processes",),
    read="read_processes",
    share=0.3,
    typical_cost=0.01,
    stale_when_failed=True,
)
SLOW = SamplingGroup(
    "slow",
    setting="slow_interval",
    default_interval=5.0,
    argument="slow_interval",
    fields=("temperature", "power", "fan", "clocks"),
    read="read_slow",
    share=0.2,
    typical_cost=0.001,
)
PCIE = SamplingGroup(
    "pcie",
    setting="pcie_interval",
    default_interval=2.0,
    argument="pcie_interval",
    fields=("pcie", "nvlink"),  # the interconnect: PCIe, and NVLink where the GPU has it
    read="read_pcie",
    share=0.1,
    typical_cost=0.04,  # two 20 ms counter samples
    watched_only=True,
)
# Cheapest and most wanted first: spare budget is handed on, and GPUs are read, in this order.
SAMPLING_GROUPS: tuple[SamplingGroup, ...] = (FAST, PROCESSES, SLOW, PCIE)
BY_NAME = {group.name: group for group in SAMPLING_GROUPS}

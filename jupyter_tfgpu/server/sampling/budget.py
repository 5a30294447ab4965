"""The sampler's driver-time budget: reading groups, their measured costs, planned cadences.

NVML calls hold the driver's lock that users' GPU work needs too, so the sampler spends at most
a share of wall time (``TFGPU.nvml_budget``) inside them; these are the numbers and the planning.
"""

from __future__ import annotations

from dataclasses import dataclass

# Reading groups, cheapest and most wanted first. Each gets a share of the driver-time budget;
# a share a group does not need passes to the others.
GROUPS = ("fast", "processes", "slow", "pcie")
SHARES = {"fast": 0.4, "processes": 0.3, "slow": 0.2, "pcie": 0.1}
# Cadences are planned on this share of the budget; the rest absorbs jitter and bursts.
PLAN_SHARE = 0.9
# The driver-time bucket holds at most this many seconds' worth of budget.
TOKEN_WINDOW = 10.0
# Typical seconds per GPU for a group never measured yet (PCIe: two 20 ms counter samples).
TYPICAL_COST = {"fast": 0.0001, "processes": 0.01, "slow": 0.001, "pcie": 0.04}


@dataclass
class GroupStats:
    """What the sampler measured for one reading group."""

    desired: float
    interval: float
    cost: float = 0.0  # seconds inside the backend per round over all GPUs (moving average)
    calls: int = 0
    seconds: float = 0.0  # total seconds inside the backend
    next_due: float = 0.0

    def record(self, seconds: float) -> None:
        """Fold one round's measured cost into the moving average."""
        self.calls += 1
        self.seconds += seconds
        self.cost = seconds if self.calls == 1 else 0.8 * self.cost + 0.2 * seconds


def plan_intervals(
    costs: dict[str, float], desired: dict[str, float], budget: float
) -> dict[str, float]:
    """Stretch each group's interval so the total time inside the backend stays within budget.

    ``costs`` are seconds per round, ``desired`` the configured intervals, ``budget`` a
    fraction of wall time. Each group may use its share of the budget; shares a group
    leaves unused are handed to the groups that need more, in ``GROUPS`` order.
    """
    groups = [g for g in GROUPS if g in desired]
    allowance = {g: SHARES[g] * budget for g in groups}
    for _ in range(len(groups)):
        spare = 0.0
        needy = []
        for g in groups:
            want = costs.get(g, 0.0) / desired[g]
            if want <= allowance[g]:
                spare += allowance[g] - want
                allowance[g] = want
            else:
                needy.append(g)
        if not needy or spare <= 1e-12:
            break
        weight = sum(SHARES[g] for g in needy)
        for g in needy:
            allowance[g] += spare * SHARES[g] / weight
    planned = {}
    for g in groups:
        cost = costs.get(g, 0.0)
        planned[g] = desired[g] if cost <= 0 else max(desired[g], cost / max(allowance[g], 1e-9))
    return planned

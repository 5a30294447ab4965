"""Which driver mechanisms a GPU run has shown holding, and the rule that turns that into a level.

A cap is said to be enforced at level ``driver`` only when both hold: the mechanism is one code
in the kernel cannot lift, and a GPU run recorded in docs/gpu-validation.md showed it refusing
allocations past the cap on that driver branch (a row of ``VERIFIED``). Anything less is level
``framework``, with the reason. Nothing has run on a GPU yet, so the table is empty; a GPU run
that shows a mechanism holding adds its row, naming the record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verified:
    """A GPU run showed ``mechanism`` holding on ``branch`` (the driver's major version)."""

    mechanism: str  # a key of policy.cap_enforcement.MECHANISMS
    branch: str  # "615" for driver 615.71.09
    record: str  # the docs/gpu-validation.md section that records the run


VERIFIED: tuple[Verified, ...] = ()


def driver_branch(version: str | None) -> str | None:
    """The driver's branch (its major version, "615" for "615.71.09"); None when unknown."""
    if not version:
        return None
    major = version.strip().split(".", 1)[0]
    return major if major.isdigit() else None


def verified(mechanism: str, branch: str | None) -> Verified | None:
    """The GPU run that showed ``mechanism`` holding on this driver branch, if any."""
    for row in VERIFIED:
        if row.mechanism == mechanism and row.branch == branch:
            return row
    return None


def driver_level(mechanism: str, driver: str | None, liftable: str | None) -> tuple[str, str | None]:
    """(level, reason) of a cap a driver mechanism holds: ``driver`` only when the kernel
    cannot lift it (``liftable`` says how it can, else None) and a GPU run verified it on this
    driver's branch; otherwise ``framework``, the reason saying which of the two fails."""
    if liftable:
        return "framework", liftable
    branch = driver_branch(driver)
    if verified(mechanism, branch) is None:
        on = f"driver branch R{branch}" if branch else "this driver (its version is unknown)"
        return "framework", (
            f"the driver limit is set ({mechanism}), but no GPU run has shown it holding on "
            f"{on} yet (docs/gpu-validation.md)"
        )
    return "driver", None

"""The state of applying and recording the policy in this process: the policy in force, the
record, the lock.

Imported with the first framework (by ``tfgpu_apply``); the modules that apply and record read and
change ``STATE`` instead of globals of their own. The GPU memory reporter keeps its own state
(``tfgpu_report.REPORTER``): it runs on a thread of its own, and starts afresh in a forked child.
"""

from __future__ import annotations

import _thread


class BootstrapState:
    """What this process's bootstrap knows: policy, per-framework record, errors, what was said."""

    def __init__(self) -> None:
        # The torch lazy callback may run while apply_torch still holds the lock: reentrant.
        self.lock = _thread.RLock()
        self.hooked: set = set()  # frameworks the policy was applied to at import (once)
        self.frameworks: dict = {}  # the record's per-framework entries
        self.errors: list = []
        self.policy: dict | None = None
        self.policy_loaded = False
        self.policy_note: str | None = None  # why there is no policy to apply, when there is none
        self.warned = False  # the one stderr line was written
        self.record_failed = False  # writing the record failed once: never try again


STATE = BootstrapState()

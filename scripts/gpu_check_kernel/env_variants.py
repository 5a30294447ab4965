"""Run in a PyTorch kernel: for each variant of this kernel's environment, a child Python (as
``!python train.py`` would start) allocates on cuda:0 in chunks until refused or at a ceiling,
its framework limit switched off; how far each got shows what that environment lets through."""

import json
import os
import subprocess
import sys

CHILD = """
import json, sys, torch
chunk, ceiling = int(sys.argv[1]), int(sys.argv[2])
torch.cuda.init()
for device in range(torch.cuda.device_count()):
    torch.cuda.set_per_process_memory_fraction(1.0, device)
blocks, allocated, refused = [], 0, None
while allocated + chunk <= ceiling:
    try:
        block = torch.empty(chunk * 2**20, dtype=torch.uint8, device="cuda:0")
        block.fill_(1)
        torch.cuda.synchronize()
    except Exception as exc:
        refused = type(exc).__name__ + ": " + str(exc)[:300]
        break
    blocks.append(block)
    allocated += chunk
print(json.dumps({"allocated_mib": allocated, "refused": refused}))
"""


def env_variants(variants, chunk_mib, ceiling_mib, given=None, timeout_s=60):
    """variants: name -> {variable: value, or None to remove it}, each applied to this kernel's
    environment with ``given`` (the variables as the kernel was given them, where it has taken
    them out since) put back first; one child each, in turn."""
    out = {}
    for name, changes in variants.items():
        env = {**os.environ, **(given or {})}
        for variable, value in changes.items():
            if value is None:
                env.pop(variable, None)
            else:
                env[variable] = value
        try:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(chunk_mib), str(ceiling_mib)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            lines = done.stdout.strip().splitlines()
            result = (
                json.loads(lines[-1])
                if done.returncode == 0 and lines
                else {"exit": done.returncode, "stderr": done.stderr[-500:]}
            )
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        out[name] = {"changes": changes, **result}
    return out

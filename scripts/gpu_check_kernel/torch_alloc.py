"""Run in a PyTorch kernel: allocate on cuda:0 in chunks until refused or at a ceiling.

Before CUDA starts it may drop variables from its own environment (as code in a notebook can);
once CUDA started it may switch the framework's limit off (the memory fraction the bootstrap
set, back to 1.0). It keeps ``keep_mib`` of what it got allocated, and frees the rest.
"""

import os
import time


def torch_alloc(chunk_mib, ceiling_mib, drop_env=(), framework_limit_off=True, keep_mib=0):
    """How far the allocations got, and what refused the next one."""
    global _tfgpu_hold  # kept in the kernel's namespace: the memory stays allocated
    dropped = {name: os.environ.pop(name, None) for name in drop_env}
    import torch

    out = {"torch": torch.__version__, "dropped": dropped}
    began = time.perf_counter()
    torch.cuda.init()  # runs the bootstrap's deferred cap first, so it can be undone below
    out["cuda_init_s"] = round(time.perf_counter() - began, 3)
    if framework_limit_off:
        for device in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    out["fraction"] = get(0) if get else None
    free, total = torch.cuda.mem_get_info(0)
    out.update(free_mib=free // 2**20, total_mib=total // 2**20, refused=None)
    chunks = []
    allocated = 0
    block = None
    while allocated + chunk_mib <= ceiling_mib:
        try:
            block = torch.empty(chunk_mib * 2**20, dtype=torch.uint8, device="cuda:0")
            block.fill_(1)
            torch.cuda.synchronize()
        except Exception as exc:  # the refusal is the finding
            out["refused"] = {"type": type(exc).__name__, "message": str(exc)[:700]}
            break
        chunks.append(block)
        allocated += chunk_mib
    out["allocated_mib"] = allocated
    _tfgpu_hold = chunks[: keep_mib // chunk_mib]
    chunks = block = None  # what is not kept goes back to the driver
    torch.cuda.empty_cache()
    out["kept_mib"] = len(_tfgpu_hold) * chunk_mib
    return out

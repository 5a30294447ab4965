"""Run in a PyTorch kernel capped at 2048 MiB: 1 GiB must work, 4 GiB must not."""


def torch_limit():
    """Allocate 1 GiB (kept) then 4 GiB (freed) on cuda:0; report the cap as torch sees it."""
    global _tfgpu_hold  # kept in the kernel's namespace: the memory stays allocated
    import tfgpu_bootstrap
    import torch

    out = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    _tfgpu_hold = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    _tfgpu_hold.fill_(1)
    torch.cuda.synchronize()
    out["alloc_1gib"] = "ok"
    out["total_memory"] = torch.cuda.get_device_properties(0).total_memory
    try:
        big = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")
        out["alloc_4gib"] = "no error"
        del big
    except torch.cuda.OutOfMemoryError as exc:
        out["alloc_4gib"] = "OutOfMemoryError"
        out["oom_message"] = str(exc)[:700]
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    out["fraction_reported"] = get(0) if get else None
    out["memory_reserved"] = torch.cuda.memory_reserved()
    out["record"] = tfgpu_bootstrap.record()["frameworks"].get("torch")
    return out

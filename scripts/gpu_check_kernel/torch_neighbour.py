"""Run in the PyTorch kernel that kept memory with ``torch_alloc``, after its neighbour's
allocations were refused: its memory still holds what it wrote, and it still runs GPU work."""


def torch_neighbour(extra_mib):
    """Check the kept blocks, allocate ``extra_mib`` more and multiply two matrices."""
    import torch

    held = list(globals().get("_tfgpu_hold") or [])
    ones = sum(int(block.sum().item()) for block in held)
    out = {"kept_mib": sum(block.numel() for block in held) // 2**20}
    out["intact"] = bool(held) and ones == sum(block.numel() for block in held)
    try:
        extra = torch.empty(extra_mib * 2**20, dtype=torch.uint8, device="cuda:0")
        extra.fill_(1)
        n = 2048
        product = torch.ones((n, n), device="cuda:0") @ torch.ones((n, n), device="cuda:0")
        torch.cuda.synchronize()
        out["extra_alloc"] = "ok"
        out["matmul_ok"] = float(product[0, 0]) == n
        del extra, product
        torch.cuda.empty_cache()
    except Exception as exc:  # the failure is the finding
        out["extra_alloc"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        out["matmul_ok"] = False
    return out

"""Run in a fresh PyTorch kernel: how long importing torch and its first CUDA work take."""

import time


def cuda_start():
    """Seconds to import torch, and then to run the first work on cuda:0."""
    began = time.perf_counter()
    import torch

    imported = time.perf_counter()
    torch.ones(1, device="cuda:0").add_(1)
    torch.cuda.synchronize()
    done = time.perf_counter()
    return {"import_s": round(imported - began, 3), "first_cuda_s": round(done - imported, 3)}

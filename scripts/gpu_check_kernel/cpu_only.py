"""Run in a kernel with ``devices: []``: what torch and JAX (where installed) see."""

import importlib.util


def cpu_only():
    """torch's CUDA availability and JAX's devices."""
    out = {}
    if importlib.util.find_spec("torch"):
        import torch

        out.update(
            torch=torch.__version__,
            torch_cuda_available=torch.cuda.is_available(),
            torch_device_count=torch.cuda.device_count(),
        )
    if importlib.util.find_spec("jax"):
        import jax

        out.update(
            jax=jax.__version__,
            jax_backend=jax.default_backend(),
            jax_devices=[f"{d.platform}:{d.id}" for d in jax.devices()],
        )
    return out

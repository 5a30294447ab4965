"""Run in a JAX kernel: allocate on the default device and keep it alive; report its allocator."""


def jax_alloc(nbytes):
    """Allocate ``nbytes`` of float32 ones on JAX's default device."""
    global _tfgpu_hold  # kept in the kernel's namespace: the memory stays allocated
    import jax
    import jax.numpy as jnp

    _tfgpu_hold = jnp.ones((nbytes // 4,), dtype=jnp.float32)
    _tfgpu_hold.block_until_ready()
    device = jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:
        stats = {}
    out = {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(device)}
    for key in ("bytes_in_use", "bytes_limit", "peak_bytes_in_use"):
        out[key + "_mib"] = None if stats.get(key) is None else round(stats[key] / 2**20, 1)
    return out

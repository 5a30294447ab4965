"""Run in a kernel on the dry run: host memory the simulated backend reports as GPU memory."""


def host_alloc(nbytes):
    """Allocate ``nbytes`` of host memory, touched so that it is resident."""
    global _tfgpu_host  # kept in the kernel's namespace: the memory stays allocated
    try:
        import numpy as np

        _tfgpu_host = np.ones(nbytes, dtype=np.uint8)
        how = "numpy " + np.__version__
    except ImportError:
        _tfgpu_host = bytearray(b"\x01") * nbytes
        how = "bytearray"
    return {"host_bytes": nbytes, "how": how}

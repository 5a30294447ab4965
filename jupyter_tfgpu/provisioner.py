"""The kernel provisioner's former home, kept so that entry points and configs naming
``jupyter_tfgpu.provisioner:TFGPUProvisioner`` still load; it lives in ``server.kernels``."""

from jupyter_tfgpu.server.kernels.provisioner import PROVISIONER_NAME, TFGPUProvisioner

__all__ = ["PROVISIONER_NAME", "TFGPUProvisioner"]

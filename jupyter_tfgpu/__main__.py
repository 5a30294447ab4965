"""`python -m jupyter_tfgpu --help-all`: the admin manual (every TFGPU setting); otherwise starts
a Jupyter server with the extension, like `jupyter server`."""

from .extension import TFGPUApp

if __name__ == "__main__":
    TFGPUApp.launch_instance()

"""`jupyter lab` whose NVML library is missing: the fake `pynvml` fails to initialise, as
nvidia-ml-py does on a host without the NVIDIA driver, whatever this machine has.

Run as a script by `labserver.Lab(..., without_nvml=True)`; every argument goes to JupyterLab.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pynvml  # noqa: E402 - the real binding, for its error codes

from tests.fake_pynvml import FakeNvml  # noqa: E402

sys.modules["pynvml"] = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND).module

from jupyterlab.labapp import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""The parts of the prepared GPU check that scripts/gpu_check.py runs, one job per module.

``server`` starts and talks to jupyter_server, ``kernels`` reaches its kernels and sends them the
code in ``scripts/gpu_check_kernel/``, ``run`` drives one check run against the server,
``checks`` holds the eight checks and ``kernel_steps`` the steps they share in a kernel,
``report`` the report's entries and the machine's record, ``wheels`` what gpu-check.sh installs.
Stdlib only, plus jupyter_client: this folder is carried to a bare machine with Python 3.12 and
the wheels of .whl/.
"""

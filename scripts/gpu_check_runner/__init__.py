"""The parts of the prepared GPU check that scripts/gpu_check.py runs, one job per module.

``server`` starts and talks to jupyter_server, ``kernels`` reaches its kernels and sends them the
code in ``scripts/gpu_check_kernel/``, ``run`` drives one check run, ``phases`` the servers it
starts one after another (no hard caps, then each ``TFGPU.hard_caps`` mode) and their checks,
``checks`` holds the first server's checks and ``kernel_steps`` the steps they share in a
kernel, ``hard_caps_checks`` and ``after_stop`` the hard-caps checks, ``probe`` what hard caps
need on the machine, ``report`` the report's entries and the machine's record, ``wheels`` what
gpu-check.sh installs.

Stdlib only, plus jupyter_client: this folder is carried to a bare machine with Python 3.12 and
the wheels of .whl/.
"""

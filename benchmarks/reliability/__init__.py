"""The sections of bench_reliability.py, one module per section, and the report of their figures.

Imported by ``benchmarks/bench_reliability.py``, which puts ``benchmarks/`` on ``sys.path`` (for
``_harness``) and the repository's root (for ``jupyter_tfgpu``) before it imports them.
"""

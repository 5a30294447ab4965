"""The sections of bench_sampler.py, by what they measure, and the report of their figures.

Imported by ``benchmarks/bench_sampler.py``, which puts ``benchmarks/`` on ``sys.path`` (for
``_harness``, ``_streams`` and ``_pyspy``) before it imports them.
"""

"""The parts of bench_scale.py: the poller process, the storm, the figures and their report.

Imported by ``benchmarks/bench_scale.py``, which puts ``benchmarks/`` on ``sys.path`` (for
``_harness`` and ``_streams``) before it imports them.
"""

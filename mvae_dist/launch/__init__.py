"""The launchers: the commands a user runs, built on the library and never imported by it.

``cli`` (the ``mvae-dist`` command), ``sweep`` (Ray Tune sweeps), ``experiments`` (the demo, the
studies, learning curves), ``bench`` / ``bench_dist`` (benchmarks), ``evaluate`` (the evaluate
command) and ``propagate`` (PMI label propagation on Ray workers). ``tests/test_imports.py``
fails if a library module imports one of them.
"""

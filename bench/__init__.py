"""seproxy's benchmarks: ``python -m bench`` (``make bench``); see docs/benchmarks.md.

Not part of the test suite: numbers depend on the machine, so each benchmark
measures seproxy next to a reference run on the same machine in the same run,
and judges the ratio.
"""

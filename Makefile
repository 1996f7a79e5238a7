# The two commands of the README, and the benchmarks.
.PHONY: serve test bench

# Set up and run the service on its embedded default (loopback, development
# credentials, LocalSE). Pass options with ARGS="--config FILE".
serve:
	scripts/setup run
	.venv/bin/seproxy serve $(ARGS)

# Set up (Debian packages, venv) and run the whole test suite.
test:
	scripts/setup test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# Benchmarks: not part of the test suite; see docs/benchmarks.md.
bench:
	scripts/setup bench
	.venv/bin/python -m bench $(ARGS)

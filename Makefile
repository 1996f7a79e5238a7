# The two commands of the README, and the benchmarks.
.PHONY: serve test bench fuzz

# Set up and run the service on its embedded default (loopback, development
# credentials, LocalSE). Pass options with ARGS="--config FILE".
serve:
	scripts/setup run
	.venv/bin/seproxy serve $(ARGS)

# Set up (Debian packages, venv), lint and type-check (ruff, mypy --strict), and run the whole test suite.
test:
	scripts/setup test
	scripts/check
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# Benchmarks: not part of the test suite; see docs/benchmarks.md.
bench:
	scripts/setup bench
	.venv/bin/python -m bench $(ARGS)

# Coverage-guided fuzzing (atheris), not part of the test suite; see docs/fuzzing.md.
# Every target for 60 s each by default; ARGS="codec --seconds 3600" for one long run.
fuzz: ARGS ?= all --seconds 60
fuzz:
	scripts/setup fuzz
	.venv/bin/python -m fuzz $(ARGS)

"""Fuzzing: shared properties and the atheris harnesses of ``python -m fuzz`` (docs/fuzzing.md)."""

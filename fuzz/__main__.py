"""``python -m fuzz TARGET|all [--seconds N] [libFuzzer options] [INPUT ...]``: coverage-guided fuzzing.

Each target is a harness module whose ``TestOneInput`` checks the
properties of fuzz/properties.py, the same ones tests/test_fuzz.py checks
with hypothesis. A run starts from the seeds in fuzz/corpus/TARGET, keeps
the inputs that reached new code in fuzz/out/TARGET/corpus (reused by the
next run) and stops at the first failure, writing the input that caused it
to fuzz/out/TARGET/crash-*. Give that file as INPUT to replay it. Options
such as ``-max_len=16384`` or ``-jobs=2`` go to libFuzzer as they are.
See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

TARGETS = {
    "codec": "fuzz.codec",
    "byte_range": "fuzz.byte_range",
    "file_ids": "fuzz.file_ids",
    "signing": "fuzz.signing",
    "request_head": "fuzz.request_head",
    "rpc_form": "fuzz.rpc_form",
}
HERE = Path(__file__).resolve().parent
# A unit slower than this is reported as a failure (a regex that backtracks, a loop that never ends).
UNIT_TIMEOUT = 10


def libfuzzer_argv(target: str, seconds: int, passed: list[str]) -> list[str]:
    """The command line for libFuzzer: our defaults first, so that options given later win."""
    out = HERE / "out" / target
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    options = [arg for arg in passed if arg.startswith("-")]
    inputs = [arg for arg in passed if not arg.startswith("-")]
    if not inputs:  # the first directory is where libFuzzer adds what it finds
        inputs = [str(out / "corpus"), str(HERE / "corpus" / target)]
    defaults = [f"-max_total_time={seconds}", f"-timeout={UNIT_TIMEOUT}", f"-artifact_prefix={out}/"]
    return [f"python -m fuzz {target}", *defaults, *options, *inputs]


def run_all(seconds: int, passed: list[str]) -> int:
    """Each target in turn, each in its own process (libFuzzer ends the process it runs in)."""
    for target in TARGETS:
        command = [sys.executable, "-m", "fuzz", target, f"--seconds={seconds}", *passed]
        status = subprocess.run(command, cwd=HERE.parent).returncode
        if status:
            print(f"python -m fuzz: {target} failed (exit status {status}); see fuzz/out/{target}/", file=sys.stderr)
            return status
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and hand over to libFuzzer, which exits the process when done."""
    parser = argparse.ArgumentParser(prog="python -m fuzz", description="Coverage-guided fuzzing (docs/fuzzing.md).")
    parser.add_argument("target", choices=[*TARGETS, "all"], help="what to fuzz; all: each target for --seconds")
    parser.add_argument("--seconds", type=int, default=60, help="how long to run (default: 60)")
    args, passed = parser.parse_known_args(argv)
    try:
        import atheris
    except ImportError:
        parser.exit(2, "python -m fuzz needs atheris: pip install atheris==2.3.0\n")
    if args.target == "all":
        return run_all(args.seconds, passed)
    atheris.enabled_hooks.add("str")  # learn the prefixes and suffixes the targets compare with
    harness = importlib.import_module(TARGETS[args.target])
    atheris.Setup(libfuzzer_argv(args.target, args.seconds, passed), harness.TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m bench [NAME ...] [--quick]``: list and run the benchmarks.

Each benchmark is a module with a ``run(args) -> dict`` function that prints
its own table; adding one is one entry in ``BENCHMARKS``. The exit status is
1 when a benchmark reports ``"passed": False``, so that ``make bench`` fails
on a missed target.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Name -> module; modules are imported only when run or listed.
BENCHMARKS = {
    "storage_proxy": "bench.storage_proxy",
    "rpc_ping": "bench.rpc_ping",
    "http_side": "bench.http_side",
    "transfer_client": "bench.transfer_client",
    "load": "bench.load",
    "cache_scale": "bench.cache_scale",
    "workers": "bench.workers",
    "freshness": "bench.freshness",
    "streaming": "bench.streaming",
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the chosen benchmarks (all by default)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="seproxy benchmarks (docs/benchmarks.md)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"what to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="short runs: checks that it works, not numbers to quote")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    if args.list:
        for name, module in BENCHMARKS.items():
            summary = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
            print(f"{name:12} {summary}")
        return 0
    missed = []
    for name in args.names or list(BENCHMARKS):
        result = importlib.import_module(BENCHMARKS[name]).run(args)
        if result.get("passed") is False:
            missed.append(name)
    if missed:
        print(f"target missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``seproxy``: one command for users and operators, with subcommands.

Exit codes: 0 success, 1 the operation failed (or some of it did), 2 usage
or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from seproxy import __version__
from seproxy.cli import cache_admin, env, info, namespace, serve, transfers
from seproxy.cli.client_options import UsageError
from seproxy.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
COMMANDS = (serve, env, cache_admin, transfers, namespace, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seproxy",
        description="Storage element proxy: stage grid files into a local cache and serve them "
        "over DIRAC-compatible HTTPS RPC and plain HTTP.",
        epilog="Run 'seproxy COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"seproxy {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"seproxy: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"seproxy {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`seproxy cache ls | head`): it had all it wanted. Output
        # still buffered goes nowhere, so that Python does not complain at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""``seproxy``: one command for users and operators, with subcommands.

Exit codes: 0 success, 1 the operation failed (or some of it did), 2 usage
or configuration error; as shells report a command ended by a signal, 130
after Ctrl-C (SIGINT) and 141 when the reader of the output went away
(SIGPIPE, as in ``seproxy ls ... | head``), both without a word.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from seproxy import __version__
from seproxy.cli import cache_admin, env, info, namespace, serve, token, transfers
from seproxy.cli.client_options import CommandFailed, ReaderGone, UsageError, abandon_stdout
from seproxy.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
COMMANDS = (serve, env, cache_admin, transfers, namespace, info, token)


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
    try:
        args = build_parser().parse_args(argv)
        code = int(args.run(args))
        sys.stdout.flush()  # here, so that a reader gone away is seen here
        return code
    except ConfigError as exc:
        print(f"seproxy: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"seproxy {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"seproxy {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (BrokenPipeError, ReaderGone):
        abandon_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

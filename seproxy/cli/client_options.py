"""What every user command shares: where the service is, which credentials, how to print results.

The options read as gfal and DIRAC users expect: the service from
``--url`` or ``SEPROXY_URL`` (``eval "$(seproxy env)"`` sets it for a local
service), credentials found as every grid tool finds them unless
``--proxy``, ``--cert``/``--key`` or ``--ca-dir`` say otherwise. ``--json``
prints the DIRAC result itself (``{"OK": ..., "Value": ...}``) for scripts.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable
from typing import Any, TextIO

from seproxy.cli.human import utc_time
from seproxy.transfer import StorageElementProxyClient
from seproxy.transfer.returnvalues import ReturnValue

EXIT_OK, EXIT_FAILED = 0, 1
_DIRAC_MESSAGE = re.compile(r"(?P<reason>[^(]+?) \( (?P<code>\d+) : (?P<detail>.*)\)", re.DOTALL)
SE_HELP = "storage element, as named in the service's configuration"


class UsageError(Exception):
    """The command line cannot work as given (exit code 2); the message says why."""


class CommandFailed(Exception):
    """The command could not do its work (exit code 1); the message says why."""


class ReaderGone(Exception):
    """Whoever read standard output went away (``| head``): the command ends quietly.

    Not an ``OSError``, so that the client library, which turns those into
    results, lets it through.
    """


def abandon_stdout() -> None:
    """Point standard output at /dev/null, so that what is still buffered for it goes nowhere
    quietly instead of failing again when the interpreter exits."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _client_options() -> argparse.ArgumentParser:
    """A parent parser with the connection, credential and output options."""
    parent = argparse.ArgumentParser(add_help=False)
    service = parent.add_argument_group("service and credentials")
    service.add_argument(
        "--url",
        default=os.environ.get("SEPROXY_URL"),
        help="service URL, https://HOST:PORT/DataManagement/StorageElementProxy; several, comma-separated, "
        "for failover (default: $SEPROXY_URL)",
    )
    service.add_argument("--proxy", metavar="FILE", help="X.509 proxy (default: $X509_USER_PROXY, /tmp/x509up_u<uid>)")
    service.add_argument("--cert", metavar="FILE", help="user certificate instead of a proxy (with --key)")
    service.add_argument("--key", metavar="FILE", help="the key of --cert")
    service.add_argument(
        "--ca-dir",
        metavar="DIR",
        help="trusted CA directory (default: $X509_CERT_DIR, /etc/grid-security/certificates)",
    )
    service.add_argument(
        "--timeout", type=float, default=600, metavar="SECONDS", help="give up on an answer after this (default: 600)"
    )
    output = parent.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the result as JSON, for scripts")
    return parent


def add_command(
    commands: Any, name: str, *, run: Callable[[argparse.Namespace], int], help: str, description: str, epilog: str = ""
) -> argparse.ArgumentParser:
    """A user command with the shared options; its own arguments are added to what this returns."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        parents=[_client_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help=help,
        description=textwrap.fill(description),
        epilog=epilog,
    )
    parser.set_defaults(run=run)
    return parser


def connect(args: argparse.Namespace) -> StorageElementProxyClient:
    """The client the options describe; ``UsageError`` if they cannot describe one."""
    if not args.url:
        raise UsageError('no service URL: give --url or set SEPROXY_URL (eval "$(seproxy env)" for a local service)')
    try:
        return StorageElementProxyClient(
            args.url, proxy=args.proxy, cert=args.cert, key=args.key, ca_dir=args.ca_dir, timeout=args.timeout
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def report(args: argparse.Namespace, result: ReturnValue, show: Callable[[Any], None]) -> int:
    """Print a result, plain with ``show(value)`` or as JSON; return the exit code."""
    if args.json:
        print_json(result)
    elif result["OK"]:
        show(result["Value"])
    else:
        complain(args, readable(result["Message"]))
    return exit_code(result)


def report_bulk(
    args: argparse.Namespace, result: ReturnValue, line: Callable[[str, Any], str], out: TextIO | None = None
) -> int:
    """A DIRAC bulk result: ``line(path, value)`` per success on ``out``, a message per failure."""

    def show(value: dict[str, Any]) -> None:
        for path, item in value["Successful"].items():
            print(line(path, item), file=out or sys.stdout)
        for path, message in value["Failed"].items():
            message = readable(message)
            complain(args, message if path in message else f"{path}: {message}")

    return report(args, result, show)


def exit_code(result: ReturnValue) -> int:
    """0 when everything succeeded; 1 for an S_ERROR, or a bulk result with failures."""
    if not result["OK"]:
        return EXIT_FAILED
    value = result["Value"]
    return EXIT_FAILED if isinstance(value, dict) and value.get("Failed") else EXIT_OK


def readable(message: str) -> str:
    """DIRAC's ``"<strerror> ( <errno> : <detail>)"`` as a person reads it: the detail, then the
    reason unless the detail says it already (``TestSE: /a: No such file or directory``)."""
    dirac = _DIRAC_MESSAGE.fullmatch(message)
    if dirac is None:
        return message
    reason, detail = dirac["reason"], dirac["detail"]
    return detail if reason in detail else f"{detail}: {reason}"


def complain(args: argparse.Namespace, message: str) -> None:
    print(f"seproxy {args.command}: {message}", file=sys.stderr)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=_plain)
    print()


def _plain(value: Any) -> Any:
    """JSON for what DIRAC results carry besides JSON: datetimes as ISO 8601 with their offset
    (DIRAC's are UTC), dates as ISO 8601, bytes as base64."""
    if isinstance(value, datetime.datetime):
        return utc_time(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")

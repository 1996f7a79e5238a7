"""``seproxy url``, ``whoami`` and ``ping``: an HTTP link for a job, who the service sees, whether it answers."""

from __future__ import annotations

import argparse
import time
from contextlib import closing
from typing import Any

from seproxy.cli.client_options import add_command, connect, report
from seproxy.cli.human import format_duration, format_seconds
from seproxy.transfer.credentials import ClientCredentials, find_bearer_token


def register(commands: Any) -> None:
    url = add_command(
        commands,
        "url",
        run=run_url,
        help="stage files by LFN and print a plain HTTP URL for them",
        description="Stage the files named by their logical file names (LFNs) and print the HTTP URL that "
        "serves them (prepareFileForHTTP): curl, wget or davix fetch it without a certificate until it "
        "expires. Several LFNs are served as one tar archive.",
    )
    url.add_argument("lfns", nargs="+", metavar="LFN", help="logical file name, such as /lab/data/run1.root")
    add_command(
        commands,
        "whoami",
        run=run_whoami,
        help="show who the service takes you for",
        description="Show the identity the service sees (DN, user, group, properties, proxy time left) "
        "and the local credentials that were presented.",
    )
    add_command(commands, "ping", run=run_ping, help="check that the service answers", description="Call the service's ping.")


def run_url(args: argparse.Namespace) -> int:
    with closing(connect(args)) as client:
        result = client.prepareFileForHTTP(args.lfns if len(args.lfns) > 1 else args.lfns[0])
    return report(args, result, lambda prepared: print(prepared["HttpURL"]))


def run_whoami(args: argparse.Namespace) -> int:
    with closing(connect(args)) as client:
        result = client.whoami()
        credentials = client.credentials
    return report(args, result, lambda identity: _print_identity(identity, credentials))


def run_ping(args: argparse.Namespace) -> int:
    with closing(connect(args)) as client:
        started = time.monotonic()
        result = client.ping()
        seconds = time.monotonic() - started

    def show(info: dict[str, Any]) -> None:
        print(
            f"{info['name']} at {info['service url']}: version {info['version']}, "
            f"up {format_duration(info['service uptime'])}, answered in {format_seconds(seconds)}"
        )
        times = info.get("cpu times") or {}
        if times:
            spent = ", ".join(f"{name} {format_seconds(value)}" for name, value in times.items())
            print(f"  load {info.get('load', '-')}; {spent}")

    return report(args, result, show)


def _print_identity(identity: dict[str, Any], credentials: ClientCredentials) -> None:
    lines = {name: _text(value) for name, value in identity.items()}
    if isinstance(identity.get("secondsLeft"), (int, float)):
        lines["secondsLeft"] += f" ({format_duration(identity['secondsLeft'])})"
    lines["credentials"] = (
        f"{credentials.kind} {credentials.cert_file} (from {credentials.source})"
        if credentials.cert_file
        else credentials.source
    )
    lines["bearer token"] = _token_source()
    width = max(len(name) for name in lines)
    for name, text in lines.items():
        print(f"{name:<{width}}  {text}")


def _token_source() -> str:
    try:
        token = find_bearer_token()
    except ValueError as exc:
        return str(exc)
    return f"from {token.source}" if token else "none found"


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)

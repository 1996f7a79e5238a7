"""``seproxy env``: the shell lines a client of this service needs.

``eval "$(.venv/bin/seproxy env)"`` in a second terminal points the client
tools at the local service, with the development proxy and CA when those
are in use, and puts the ``seproxy`` command (and the Python it runs with)
on ``PATH``. The service's start-up banner prints the exact line to use.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from seproxy.cli.settings import add_config_option, settings_from_args
from seproxy.security.host_credentials import server_credentials
from seproxy.service import service_url


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "env",
        help="print shell export lines for clients of this service",
        description="Print 'export' lines (SEPROXY_URL, X509_USER_PROXY, X509_CERT_DIR, and PATH with the "
        "directory of this seproxy command) for a client of the service described by the config. "
        'Use: eval "$(.venv/bin/seproxy env)", with the --config (and --port) the service was started with. '
        "Development credentials that are missing or about to expire are made anew, and said so on "
        "standard error.",
    )
    add_config_option(parser)
    parser.add_argument("--port", type=int, help="the service.port override the service was started with")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.port is not None:
        settings.service.port = args.port
    credentials = server_credentials(settings)
    variables = {"SEPROXY_URL": service_url(settings), "X509_CERT_DIR": str(credentials.ca_dir)}
    development = credentials.development
    if development is not None:
        variables["X509_USER_PROXY"] = str(development.proxy)
        if development.issued:
            print(
                f"seproxy env: made new development credentials in {development.directory}: "
                f"{', '.join(development.issued)}",
                file=sys.stderr,
            )
    for name, value in variables.items():
        print(f"export {name}={shlex.quote(value)}")
    commands = _commands_directory()
    if commands is not None and str(commands) not in os.environ.get("PATH", "").split(os.pathsep):
        print(f'export PATH={shlex.quote(str(commands))}:"$PATH"')
    return 0


def env_command(config: str | None, port: int | None = None) -> str:
    """The exact ``eval`` line for a service started with ``config`` (and a ``port`` override)."""
    commands = _commands_directory()
    words = [str(commands / "seproxy")] if commands else [sys.executable, "-m", "seproxy"]
    words.append("env")
    if config:
        words += ["--config", os.path.abspath(config)]
    if port is not None:
        words += ["--port", str(port)]
    return f'eval "$({shlex.join(words)})"'


def _commands_directory() -> Path | None:
    """The directory of the ``seproxy`` command beside this Python (a venv's ``bin``), if there is one."""
    directory = Path(sys.executable).parent
    return directory if (directory / "seproxy").is_file() else None

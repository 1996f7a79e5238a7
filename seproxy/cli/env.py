"""``seproxy env``: the shell lines a client of this service needs.

``eval "$(seproxy env)"`` in a second terminal points the client tools at
the local service, with the development proxy and CA when those are in use.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from seproxy.cli.settings import add_config_option, settings_from_args
from seproxy.security.host_credentials import server_credentials
from seproxy.service import service_url


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "env",
        help="print shell export lines for clients of this service",
        description="Print 'export' lines (SEPROXY_URL, X509_USER_PROXY, X509_CERT_DIR) for a "
        'client of the service described by the config. Use: eval "$(seproxy env)"',
    )
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    credentials = server_credentials(settings)
    variables = {"SEPROXY_URL": service_url(settings), "X509_CERT_DIR": str(credentials.ca_dir)}
    if credentials.development is not None:
        variables["X509_USER_PROXY"] = str(credentials.development.proxy)
    for name, value in variables.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0

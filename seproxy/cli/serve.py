"""``seproxy serve``: run the service in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from seproxy import logs
from seproxy.cli.env import env_command
from seproxy.cli.settings import add_config_option, settings_from_args
from seproxy.proxy import StorageElementProxyHandler
from seproxy.service import Service, serve


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the seproxy service in the foreground until SIGTERM or Ctrl-C. "
        "With no config it listens on loopback with generated development credentials.",
    )
    add_config_option(parser)
    parser.add_argument("--port", type=int, help="override service.port")
    parser.set_defaults(run=run)


def _announce(service: Service, args: argparse.Namespace) -> None:
    settings = service.settings
    lines = [f"seproxy is serving {service.url}", f"  config: {settings.source}"]
    dev = service.credentials.development if service.credentials else None
    if dev is not None:
        lines += [
            f"  state:  {settings.service.state_dir} (development credentials, storage LocalSE)",
            "Call it from another terminal:",
            f"  {env_command(args.config, args.port)}",
            "  seproxy whoami",
            "  seproxy put FILE LocalSE /dev/FILE && seproxy url /dev/FILE",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.port is not None:
        settings.service.port = args.port
    logs.configure(settings.service.log_level)
    asyncio.run(serve(settings, StorageElementProxyHandler, on_ready=lambda service: _announce(service, args)))
    return 0

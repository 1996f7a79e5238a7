"""``seproxy serve``: run the service in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from seproxy import logs
from seproxy.cli.env import env_command
from seproxy.cli.settings import add_config_option, settings_from_args
from seproxy.cli.supervisor import Supervisor, WorkerSpec
from seproxy.config import Workers, available_cores
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
    parser.add_argument(
        "--workers",
        type=_workers,
        help='override service.workers: processes serving the ports together ("auto": one per available core)',
    )
    # How the supervisor starts a worker process (see seproxy.cli.supervisor); not for people.
    parser.add_argument("--worker", type=WorkerSpec.parse, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def _workers(text: str) -> Workers:
    if text == "auto":
        return Workers(available_cores())
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a number of processes (1 or more) or "auto", got {text!r}')
    return Workers(int(text))


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
    if args.workers is not None:
        settings.service.workers = args.workers
    worker: WorkerSpec | None = args.worker
    logs.configure(settings.service.log_level, worker.index if worker else None, settings.service.log_flush_after)
    if worker is not None:
        worker.follow_supervisor()
        worker.apply(settings)
        on_ready = (lambda service: _announce(service, args)) if worker.index == 0 else None
        try:
            asyncio.run(serve(settings, StorageElementProxyHandler, on_ready=lambda service: _ready(service, worker, on_ready)))
        except OSError as exc:  # a file or folder it cannot use: one line, and the supervisor stops
            print(f"seproxy: worker {worker.index}: {exc}", file=sys.stderr)
            return 1
        return 0
    if settings.service.workers > 1:
        command = [sys.executable, "-m", "seproxy", "serve"] + (["--config", args.config] if args.config else [])
        return Supervisor(settings, command).run()
    asyncio.run(serve(settings, StorageElementProxyHandler, on_ready=lambda service: _announce(service, args)))
    return 0


def _ready(service: Service, worker: WorkerSpec, announce: Callable[[Service], None] | None) -> None:
    if announce is not None:
        announce(service)
    worker.ready()

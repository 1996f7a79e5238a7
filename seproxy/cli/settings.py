"""The ``--config`` option shared by the commands that read the service config."""

from __future__ import annotations

import argparse
import os

from seproxy.config import Settings, load_settings
from seproxy.defaults import embedded_settings


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=os.environ.get("SEPROXY_CONFIG"),
        help="service config file (TOML; default: $SEPROXY_CONFIG, else the embedded default: "
        "loopback, development credentials, LocalSE under the state folder)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.config) if args.config else embedded_settings()

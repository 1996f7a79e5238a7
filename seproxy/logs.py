"""Logging set-up shared by the service and the CLI."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    """Log to stderr (journald and container runtimes collect it from there)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Every request is logged once by the RPC layer, with the caller; Tornado's
    # own access log would repeat it without the identity.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)

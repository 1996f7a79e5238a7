"""Logging set-up shared by the service and the CLI.

Every line logged while a request is handled carries that request's id,
also lines from the storage plugins and the cache running in worker
threads: the id lives in a context variable, which the RPC executor copies
into the thread that runs the call.
"""

from __future__ import annotations

import contextvars
import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("seproxy_request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: str = "INFO", worker: int | None = None) -> None:
    """Log to stderr (journald and container runtimes collect it from there).

    A worker process (see seproxy.cli.supervisor) names itself in every line:
    the workers share one stderr.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT if worker is None else FORMAT.replace("%(name)s", f"w{worker} %(name)s")))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

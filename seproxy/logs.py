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
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("seproxy_request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _Formatter(logging.Formatter):
    """The standard format, with the time of day formatted once a second instead of once a line:
    busy servers log a line per request, and ``strftime`` was a tenth of that line's cost."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"


def _skip_what_no_line_shows() -> None:
    """No line shows the caller's source line, thread or process names: the logging
    documentation's "Optimization" section names these switches for not collecting them."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure(level: str = "INFO", worker: int | None = None) -> None:
    """Log to stderr (journald and container runtimes collect it from there).

    A worker process (see seproxy.cli.supervisor) names itself in every line:
    the workers share one stderr.
    """
    handler = logging.StreamHandler(sys.stderr)
    _skip_what_no_line_shows()
    handler.setFormatter(_Formatter(FORMAT if worker is None else FORMAT.replace("%(name)s", f"w{worker} %(name)s")))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

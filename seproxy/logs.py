"""Logging set-up shared by the service and the CLI.

Every line logged while a request is handled carries that request's id,
also lines from the storage plugins and the cache running in worker
threads: the id lives in a context variable, which the RPC executor copies
into the thread that runs the call.
"""

from __future__ import annotations

import contextvars
import logging
import select
import sys
import threading
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# One write carries whole lines of at most this many characters, so at most PIPE_BUF bytes of UTF-8:
# the kernel writes that much to a pipe at once, and the lines of workers sharing stderr never mix.
BATCH_CHARS = select.PIPE_BUF // 4

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


class _BatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, written a few lines at a time, as nginx's buffered access log is.

    A busy server logs a line per request, and a ``write`` per line was a
    few per cent of the side server's work per small download (the system
    call, and its wake-up of whoever reads stderr). Lines now wait, at
    most ``flush_after`` seconds (a thread writes them out when no new line
    does); a WARNING or worse goes out at once with every line before it, so
    an error is seen when it happens and in its order.
    """

    def __init__(self, flush_after: float) -> None:
        super().__init__(sys.stderr)
        self._flush_after = flush_after
        self._lines: list[str] = []
        self._oldest = 0.0
        if flush_after:
            threading.Thread(target=self._flush_now_and_then, name="log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        now = time.monotonic()
        if not self._lines:
            self._oldest = now
        self._lines.append(line)
        if record.levelno >= logging.WARNING or now - self._oldest >= self._flush_after:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._lines = self._lines, []
            batch: list[str] = []
            size = 0
            for line in lines:
                if batch and size + len(line) > BATCH_CHARS:
                    self._write("".join(batch))
                    batch, size = [], 0
                batch.append(line)
                size += len(line)
            if batch:
                self._write("".join(batch))
        finally:
            self.release()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: there is nowhere to say so
            pass

    def _flush_now_and_then(self) -> None:
        while True:
            time.sleep(self._flush_after)
            if self._lines:
                self.flush()


def configure(level: str = "INFO", worker: int | None = None, flush_after: float = 0.0) -> None:
    """Log to stderr (journald and container runtimes collect it from there), lines waiting
    at most ``flush_after`` seconds to be written with others.

    A worker process (see seproxy.cli.supervisor) names itself in every line:
    the workers share one stderr.
    """
    handler = _BatchedHandler(flush_after)
    _skip_what_no_line_shows()
    handler.setFormatter(_Formatter(FORMAT if worker is None else FORMAT.replace("%(name)s", f"w{worker} %(name)s")))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

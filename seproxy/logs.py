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

# ``_Formatter.line`` writes the same fields in an f-string: change both (tests/test_logs.py compares them).
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# One write carries whole lines of at most this many bytes (a line that is not ASCII counted as four
# bytes a character): the kernel writes that much to a pipe at once, and the lines of workers sharing
# stderr never mix.
BATCH_BYTES = select.PIPE_BUF
# The milliseconds of a line's time, formatted once.
_MILLISECONDS = [f"{n:03d}" for n in range(1000)]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("seproxy_request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _Formatter(logging.Formatter):
    """``FORMAT`` (a worker's number before the logger's name), with the time of day formatted once a
    second instead of once a line: busy servers log a line per request, and ``strftime`` was a tenth
    of that line's cost."""

    _second: tuple[int, str] = (-1, "")

    def __init__(self, worker: int | None) -> None:
        self._worker = "" if worker is None else f"w{worker} "
        super().__init__(FORMAT.replace("%(name)s", f"{self._worker}%(name)s"))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._time_of_day(record.created, int(record.msecs))

    def _time_of_day(self, created: float, msecs: int) -> str:
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format, self.converter(created)))
        return f"{self._second[1]},{_MILLISECONDS[msecs]}"

    def line(self, level: int, name: str, message: str) -> str:
        """What ``format`` makes of a record of ``message`` logged now, without the record (nor the
        mapping and ``%`` of ``FORMAT``: the same fields in an f-string cost a third)."""
        created = time.time()
        asctime = self._time_of_day(created, int((created - int(created)) * 1000))
        return f"{asctime} {logging.getLevelName(level)} {self._worker}{name} [{request_id.get()}] {message}"


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
        self._add(line, record.levelno)

    def _add(self, line: str, level: int) -> None:
        now = time.monotonic()
        if not self._lines:
            self._oldest = now
        self._lines.append(line)
        if level >= logging.WARNING or now - self._oldest >= self._flush_after:
            self.flush()

    def log_line(self, logger: logging.Logger, level: int, message: str) -> bool:
        """Write ``message`` as ``logger.log(level, "%s", message)`` would, if this handler is the only
        place it would go (False: it is not; nothing was written).

        Logging a line makes a ``LogRecord`` and passes it through every logger and handler on
        its way; for the access line of each request that was a per cent of a small call's cost.
        """
        if not self._alone_for(logger, level):
            return False
        assert isinstance(self.formatter, _Formatter)
        line = self.formatter.line(level, logger.name, message) + self.terminator
        with self.lock:  # type: ignore[union-attr]  # (made by the handler's constructor)
            self._add(line, level)
        return True

    def _alone_for(self, logger: logging.Logger, level: int) -> bool:
        """Whether a record of ``level`` from ``logger`` would reach this handler only, and unchanged
        but for the request id (the one filter ``configure`` gives it)."""
        if logger.disabled or logger.filters or not logger.isEnabledFor(level) or level < self.level:
            return False
        if len(self.filters) != 1 or not isinstance(self.filters[0], RequestIdFilter):
            return False
        handlers: list[logging.Handler] = []
        node: logging.Logger | None = logger
        while node is not None:
            handlers += node.handlers
            node = node.parent if node.propagate else None
        return handlers == [self]

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._lines = self._lines, []
            batch: list[str] = []
            size = 0
            for line in lines:
                length = len(line) if line.isascii() else 4 * len(line)
                if batch and size + length > BATCH_BYTES:
                    self._write("".join(batch))
                    batch, size = [], 0
                batch.append(line)
                size += length
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


# The handler ``configure`` installed, if it did.
_handler: _BatchedHandler | None = None


def log_info(logger: logging.Logger, message: str) -> None:
    """``logger.info("%s", message)``, for a line logged per request: written straight to the
    handler ``configure`` installed when the line would go there only (``_BatchedHandler.log_line``)."""
    handler = _handler
    if handler is None or not handler.log_line(logger, logging.INFO, message):
        logger.info("%s", message)


def configure(level: str = "INFO", worker: int | None = None, flush_after: float = 0.0) -> None:
    """Log to stderr (journald and container runtimes collect it from there), lines waiting
    at most ``flush_after`` seconds to be written with others.

    A worker process (see seproxy.cli.supervisor) names itself in every line:
    the workers share one stderr.
    """
    global _handler
    handler = _handler = _BatchedHandler(flush_after)
    _skip_what_no_line_shows()
    handler.setFormatter(_Formatter(worker))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

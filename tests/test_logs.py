"""The access line written straight to the batched handler (``logs.log_info``) is the line logging
would write, and goes through logging whenever logging would send it anywhere else too."""

from __future__ import annotations

import io
import logging
import re
import select
from collections.abc import Iterator

import pytest

from seproxy import logs

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    """What ``configure`` (below) makes the service's log handler write, at once; logging is put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._handler
    try:
        yield io.StringIO()
    finally:
        root.handlers[:], root.level, logs._handler = saved


def configure(stderr: io.StringIO, level: str, worker: int | None = None) -> None:
    """``logs.configure``, its stderr ``stderr`` (pytest puts its own in ``sys.stderr`` while a test runs)."""
    logs.configure(level, worker)
    assert logs._handler is not None
    logs._handler.setStream(stderr)


def lines(written: io.StringIO) -> list[str]:
    return written.getvalue().splitlines()


@pytest.mark.parametrize("worker", [None, 3])
def test_the_direct_line_is_the_line_logging_writes(stderr: io.StringIO, worker: int | None):
    configure(stderr, "INFO", worker)
    access = logging.getLogger("seproxy.access")
    token = logs.request_id.set("0123abcd")
    try:
        message = "127.0.0.1 user=dev dn='/O=x/CN=y' method=ping status=200 outcome=OK 0.4ms"
        assert logs._handler is not None and logs._handler.log_line(access, logging.INFO, message)
        access.info("%s", message)
    finally:
        logs.request_id.reset(token)
    direct, logged = lines(stderr)
    assert TIME.match(direct) and TIME.match(logged), (direct, logged)
    assert TIME.sub("", direct) == TIME.sub("", logged)
    name = "seproxy.access" if worker is None else "w3 seproxy.access"
    assert TIME.sub("", direct) == f"INFO {name} [0123abcd] {message}"


def test_the_level_rules_hold(stderr: io.StringIO):
    configure(stderr, "WARNING")
    logs.log_info(logging.getLogger("seproxy.access"), "not shown")
    configure(stderr, "INFO")
    logging.getLogger("seproxy.access").setLevel(logging.WARNING)
    try:
        logs.log_info(logging.getLogger("seproxy.access"), "not shown either")
    finally:
        logging.getLogger("seproxy.access").setLevel(logging.NOTSET)
    logs.log_info(logging.getLogger("seproxy.access"), "shown")
    assert [line.split("] ", 1)[1] for line in lines(stderr)] == ["shown"]


def test_another_handler_gets_the_line_through_logging(stderr: io.StringIO):
    configure(stderr, "INFO")
    seen: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = seen.append  # type: ignore[method-assign]
    access = logging.getLogger("seproxy.access")
    for where in (logging.getLogger(), access):
        where.addHandler(extra)
        try:
            logs.log_info(access, f"line for {where.name}")
        finally:
            where.removeHandler(extra)
    assert [record.getMessage() for record in seen] == ["line for root", "line for seproxy.access"]
    assert [line.split("] ", 1)[1] for line in lines(stderr)] == ["line for root", "line for seproxy.access"]


def test_without_configure_the_line_goes_through_logging(stderr: io.StringIO, caplog: pytest.LogCaptureFixture):
    logs._handler = None
    with caplog.at_level(logging.INFO, logger="seproxy.access"):
        logs.log_info(logging.getLogger("seproxy.access"), "through logging")
    assert "through logging" in caplog.text


class _Writes(io.StringIO):
    """A stderr that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_lines_go_out_in_whole_lines_of_at_most_pipe_buf_bytes(stderr: io.StringIO):
    """Workers share one stderr: a write of at most PIPE_BUF bytes reaches a pipe whole, so their lines
    never mix; within that, as many lines as fit go in one write (a system call fewer per line)."""
    written = _Writes()
    logs.configure("INFO", flush_after=60)
    assert logs._handler is not None
    logs._handler.setStream(written)
    access = logging.getLogger("seproxy.access")
    for number in range(300):
        logs.log_info(access, f"line {number} " + ("é" if number % 7 == 0 else "") + "x" * 90)
    logs._handler.flush()
    assert all(len(text.encode()) <= select.PIPE_BUF and text.endswith("\n") for text in written.writes)
    assert len(written.getvalue().splitlines()) == 300
    assert len(written.writes) <= 300 * 130 // (select.PIPE_BUF // 2)  # writes at least half full

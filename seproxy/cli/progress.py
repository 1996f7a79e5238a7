"""Progress of transfers: a line redrawn in place on a terminal, nothing elsewhere.

The line shows the file, the percentage, the bytes, the average rate and the
time left, like curl's and gfal-copy's. It is redrawn at most ten times a
second, so drawing never slows a transfer. Redirected to a file or a pipe,
the output stays clean: commands print one final line per file instead,
using the times kept here.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from seproxy.cli.human import format_size

REDRAW_INTERVAL = 0.1
_ERASE_LINE = "\r\x1b[K"


class TransferProgress:
    """The ``progress(name, done, total)`` callback of ``getFile``/``putFile``, one file after another.

    ``live`` draws on ``stream`` (meant for a terminal); either way
    ``elapsed[name]`` is the time each file took, for the final lines.
    """

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.elapsed: dict[str, float] = {}
        self._stream = stream
        self._live = live
        self._name: str | None = None
        self._started = 0.0
        self._drawn_at = 0.0
        self._drawn = False

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if name != self._name:
            self.clear()
            self._name, self._started = name, now
        seconds = now - self._started
        self.elapsed[name] = seconds
        if self._live and (now - self._drawn_at >= REDRAW_INTERVAL or done == total):
            self._draw(_line(name, done, total, seconds))
            self._drawn_at = now

    def clear(self) -> None:
        """Erase the line, so that whatever is printed next starts on a clean one."""
        if self._drawn:
            self._stream.write(_ERASE_LINE)
            self._stream.flush()
            self._drawn = False

    def _draw(self, line: str) -> None:
        width = shutil.get_terminal_size().columns - 1
        if len(line) > width:
            line = "…" + line[len(line) - width + 1 :]
        self._stream.write(_ERASE_LINE + line)
        self._stream.flush()
        self._drawn = True


def rate(size: int, seconds: float) -> str:
    """``52.3 MiB/s``; a transfer too short to time reads as instantaneous."""
    return f"{format_size(size / seconds)}/s" if seconds > 0 else "-"


def _line(name: str, done: int, total: int | None, seconds: float) -> str:
    parts = [name]
    if total:
        parts.append(f"{100 * done / total:3.0f}%  {format_size(done)} / {format_size(total)}")
    else:
        parts.append(format_size(done))
    parts.append(rate(done, seconds))
    if total and done and seconds > 0:
        parts.append(f"ETA {_clock((total - done) * seconds / done)}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

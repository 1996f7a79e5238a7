"""Following a file while it is staged, from any process that shares the cache.

A reader must not wait for a whole staging before its first byte, and it
may live in another worker process than the staging, so it learns
everything from the file system, never from the writer's memory: the
writer flushes every chunk to the operating system, the temporary file's
size says how much has arrived, and where the file is says how the staging
ends. The verified file is renamed to ``data/<id>`` (committed); a failed
one is unlinked (nothing left). A descriptor opened once on the temporary
file stays valid through both, so the bytes read are those of one inode
from the first to the last.

No SQLite here: a reader asks several hundred times a second, and a
``stat`` of two paths plus an ``fstat`` costs microseconds. Only a file
that stopped growing for a while is checked against the index
(``still_staged``): a writer that died leaves its partial file until
recovery removes it, and its readers must not wait for it until their
deadline.

The rule that keeps a partial file from ever looking whole: until the file
is committed (verified), the last byte of an announced size is never
readable. A reader that answered with that size as ``Content-Length`` can
thus always cut the connection before the end when the staging fails, even
on a checksum mismatch found after the last byte arrived. Without an
announced size, the end is known only at the commit.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from types import TracebackType

from seproxy.cache.entry import Growing

# How long the blocking wait sleeps between looks (for threads; an event loop polls on its own).
POLL_INTERVAL = 0.005
# How long a file may stay the same size before ``still_staged`` is asked.
STALL_CHECK = 1.0


class StagingFailed(OSError):
    """The staging being followed ended without a verified file: what was read is not the whole file."""


def _exists(path: os.PathLike[str]) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


class Follower:
    """Reads of one growing file as its bytes arrive; ``deadline`` (``time.monotonic()``) bounds the waits.

    ``poll()`` never blocks (an event loop calls it); ``wait()`` blocks,
    polling, for threads. ``done``: committed, the whole verified file is
    readable. ``failed``: the staging ended with nothing kept.
    ``still_staged``: whether the index still lists the staging under a
    live writer (``Cache.growing_entry``), asked when the file stalls.
    """

    def __init__(self, growing: Growing, deadline: float, *, still_staged: Callable[[], bool] | None = None) -> None:
        self.growing = growing
        self.deadline = deadline
        self.done = False
        self.failed = False
        self._readable = 0
        self._still_staged = still_staged
        self._seen = (-1, time.monotonic())  # (size, when it was first seen)
        try:
            self._fd = os.open(growing.tmp_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # It ended between the lookup and now: committed, or failed.
            try:
                self._fd = os.open(growing.final_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.failed = True
                raise self._failure() from None
            self.done = True

    @property
    def size(self) -> int | None:
        """The file's size: the announced one, or once committed the real one; None while unknown."""
        if self.done:
            return os.fstat(self._fd).st_size
        return self.growing.size

    def poll(self) -> int:
        """Bytes readable now from the start of the file; ``StagingFailed`` if the staging failed."""
        if not self.done and not self.failed:
            # Final path first: a rename between the two looks must not read as "gone".
            if _exists(self.growing.final_path):
                self.done = True
            elif not _exists(self.growing.tmp_path) and not _exists(self.growing.final_path):
                self.failed = True
        if self.failed:
            raise self._failure()
        readable = os.fstat(self._fd).st_size
        if not self.done:
            self._check_writer(readable)
        if not self.done and self.growing.size is not None:
            readable = min(readable, self.growing.size - 1)  # the last byte waits for the commit
        self._readable = max(self._readable, readable)
        return self._readable

    def _check_writer(self, size: int) -> None:
        """Fail a file that stopped growing because its writer is gone (asked once per ``STALL_CHECK``)."""
        now = time.monotonic()
        if size != self._seen[0]:
            self._seen = (size, now)
        elif self._still_staged is not None and now - self._seen[1] > STALL_CHECK:
            self._seen = (size, now)
            if not self._still_staged() and not _exists(self.growing.final_path):
                self.failed = True
                raise self._failure()

    def wait(self, offset: int, timeout: float | None = None) -> int:
        """Block until bytes from ``offset`` on are readable; return how many (0: the file ended
        before ``offset``). ``TimeoutError`` past the deadline (or ``timeout``) with none."""
        limit = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        while (available := self.arrived(offset, limit)) is None:
            time.sleep(POLL_INTERVAL)
        return available

    def arrived(self, offset: int, limit: float | None = None) -> int | None:
        """One look of a waiting reader: how many bytes from ``offset`` on are readable (0: the file
        ended before ``offset``), None while there are none yet; ``TimeoutError`` once none came
        by ``limit`` (``time.monotonic()``; the deadline if None)."""
        available = self.poll() - offset
        if available > 0 or self.done:
            return max(available, 0)
        if time.monotonic() >= (self.deadline if limit is None else limit):
            raise self.timed_out(offset)
        return None

    def timed_out(self, offset: int) -> TimeoutError:
        """The error of a reader that waited in vain for the byte at ``offset``."""
        return TimeoutError(
            errno.ETIMEDOUT,
            f"the staging of {self.growing.se}:{self.growing.source_path} (cache file {self.growing.entry_id}) "
            f"did not deliver byte {offset} in time",
        )

    def read(self, offset: int, count: int) -> bytes:
        """Up to ``count`` bytes at ``offset``, within what the last ``poll`` found readable."""
        return os.pread(self._fd, max(0, min(count, self._readable - offset)), offset)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _failure(self) -> StagingFailed:
        return StagingFailed(
            errno.EIO,
            f"the staging of {self.growing.se}:{self.growing.source_path} failed before its end (cache file "
            f"{self.growing.entry_id} removed): what was read of it is not the whole file",
        )

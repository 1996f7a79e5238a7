"""Writing one file into the cache, hashing the bytes as they pass.

The checksums are computed on the chunks as they are written, never by
reading the file again: a second pass over a 1 GiB staging would double its
disk traffic. xxh3-64 (the cache's own) and ADLER32 (what grid catalogues
store, and what clients ask the HTTP side for) are both always computed,
so every entry can be described and verified without reading it again.

The writer owns its temporary file until it is complete; the cache decides
where that file lives and commits it by renaming.

Room in the cache is made as bytes arrive, never for a size merely
announced: a client that declares a petabyte and sends nothing must not
empty the cache. It is made in steps of at most as much again as has
arrived (and ``ROOM_STEP``), so that a large file asks the index a few
dozen times, not at every chunk. What was announced is only checked up front (``admit``)
against what the cache could ever give, so that a file that cannot fit is
refused before anything is evicted.
"""

from __future__ import annotations

import ctypes
import os
import zlib
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

import xxhash

from seproxy.cache.entry import Entry
from seproxy.cache.space import FULL_DISK_ERRNOS, DiskSpace

# The names sources and clients use for the checksums we can compute.
_ALGORITHMS = {"adler32": "adler32", "ad": "adler32", "xxh3": "xxh3", "xxh3_64": "xxh3", "xxh3-64": "xxh3"}


# The most room made ahead of the bytes that arrived.
ROOM_STEP = 64 * 1024 * 1024
# How many written bytes are handed to the disk at a time while a file is written (see _writeback).
WRITEBACK_STEP = 8 * 1024 * 1024


def _start_writeback() -> Callable[[int, int, int], object] | None:
    """Linux's ``sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE)``: starts writing a range
    to the disk and returns without waiting (None where the C library lacks it).

    The commit's fsync must wait for every byte to be on the disk, and a reader's last byte waits
    for the commit: left to the kernel, a 1 GiB file is still all in memory when its last byte
    arrives, and the fsync then takes as long again as a fast storage took to send it. Started as
    the bytes come, the writing to the disk runs beside the transfer. The standard library has no
    binding for it (``os.posix_fadvise`` starts the same writing but then drops the pages that
    readers following the growing file are about to read).
    """
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    write_only = 2  # SYNC_FILE_RANGE_WRITE
    return lambda fd, offset, count: call(fd, offset, count, write_only)


_writeback = _start_writeback()


class VerificationError(ValueError):
    """The bytes received are not the bytes the source announced (size or checksum)."""


def _expected_checksums(checksums: Mapping[str, str]) -> dict[str, int]:
    """The checksums we can verify, by our algorithm name; values compared as numbers
    because catalogues disagree about case and leading zeros of ADLER32."""
    expected = {}
    for name, value in checksums.items():
        algorithm = _ALGORITHMS.get(name.lower())
        if algorithm and value:
            try:
                expected[algorithm] = int(value, 16)
            except ValueError:
                raise ValueError(f"{name} checksum {value!r} is not hexadecimal") from None
    return expected


class StagingWriter:
    """The sink a fetch or an upload writes into (the ``DownloadSink`` protocol).

    Call ``expect(size, checksums)`` first if anything is known, then
    ``write(chunk)`` with large chunks. After the cache has committed the
    file, ``entry`` is the new cache entry.

    Every chunk reaches the operating system before ``write`` returns, so a
    reader in another process that follows the file sees it at once.
    ``announce`` (a staging's) is called with what is known of the file at
    ``expect`` and, if that never came, at the first write: it lists the
    file as growing for those readers.
    """

    def __init__(
        self,
        path: Path,
        space: DiskSpace,
        admit: Callable[[StagingWriter, int], None],
        make_room: Callable[[int], None],
        *,
        owner: str | None = None,
        announce: Callable[[StagingWriter], None] | None = None,
    ) -> None:
        self.path = path
        self.written = 0
        self.entry: Entry | None = None
        # The user whose upload this is (their share of the quota), None for a staging.
        self.owner = owner
        self._space = space
        self._admit = admit
        self._make_room = make_room
        self._announce = announce
        self._announced = False
        self._file = open(path, "xb")
        self._written_back = 0  # bytes whose writing to the disk has been started
        self._room = 0  # bytes from the start of the file that room has been made for
        self._xxh3 = xxhash.xxh3_64()
        self._adler32 = 1  # the ADLER32 of no bytes
        self._size: int | None = None
        self._expected: dict[str, int] = {}
        # When the source last modified the file, if it said (served as Last-Modified).
        self.source_mtime: float | None = None

    def expect(
        self, size: int | None, checksums: Mapping[str, str] | None = None, mtime: float | None = None
    ) -> None:
        """Announce what the source says the file is; checked at the end, and the size is
        checked right now against what the cache could give (``OSError``, nothing evicted)."""
        if self.written:
            raise ValueError("expect() must come before the first write()")
        if size is not None and size < 0:
            raise ValueError(f"negative expected size {size}")
        self._size = size
        self._expected = _expected_checksums(checksums or {})
        self.source_mtime = mtime
        if size:
            self._admit(self, size)
        self._tell_readers()

    def _tell_readers(self) -> None:
        if self._announce is not None:
            self._announce(self)
            self._announced = True

    @property
    def expected_adler32(self) -> str | None:
        """The ADLER32 the source announced (hex, 8 digits), None if it announced none."""
        value = self._expected.get("adler32")
        return None if value is None else f"{value:08x}"

    @property
    def expected_size(self) -> int | None:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        count = memoryview(data).nbytes
        if self._size is not None and self.written + count > self._size:
            raise VerificationError(f"the source sent more than the {self._size} bytes it announced")
        if self._size is not None and self.written + count > self._room:
            # Without an announced size nothing is made room for: the disk itself says when it is full.
            step = max(count, min(self.written, ROOM_STEP, self._size - self.written))
            self._make_room(step)
            self._room = self.written + step
        if not self._announced:
            self._tell_readers()
        self._guard_disk(count, self._write_through, data)
        self._xxh3.update(data)
        self._adler32 = zlib.adler32(data, self._adler32)
        self.written += count

    def _write_through(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)
        self._file.flush()  # to the OS now: readers of the growing file follow it from other processes
        end = self.written + memoryview(data).nbytes
        if _writeback is not None and end - self._written_back >= WRITEBACK_STEP:
            # A failure here only leaves the work to the commit's fsync, which reports it.
            _writeback(self._file.fileno(), self._written_back, end - self._written_back)
            self._written_back = end

    def finish(self) -> tuple[int, str, str]:
        """Make the bytes durable and verify them; return (size, xxh3, adler32) in hex."""
        self._guard_disk(0, self._file.flush)
        # Durable before the rename, so that a power cut cannot leave a whole-looking empty file.
        self._guard_disk(0, os.fsync, self._file.fileno())
        self._file.close()
        if self._size is not None and self.written != self._size:
            raise VerificationError(f"received {self.written} bytes, the source announced {self._size}")
        actual = {"xxh3": self._xxh3.intdigest(), "adler32": self._adler32}
        for algorithm, value in self._expected.items():
            if actual[algorithm] != value:
                raise VerificationError(f"{algorithm} mismatch: expected {value:x}, computed {actual[algorithm]:x}")
        return self.written, self._xxh3.hexdigest(), f"{self._adler32:08x}"

    def discard(self) -> None:
        """Remove the partial file (a failed or refused write leaves nothing behind)."""
        with suppress(OSError):
            self._file.close()  # may fail again flushing onto a full disk; it closes anyway
        self.path.unlink(missing_ok=True)

    def _guard_disk(self, pending: int, operation: Callable[..., object], *args: object) -> None:
        """Run a write operation; a full disk becomes the cache's clear ENOSPC error."""
        try:
            operation(*args)
        except OSError as error:
            if error.errno in FULL_DISK_ERRNOS:
                raise self._space.full(self.written + pending) from error
            raise

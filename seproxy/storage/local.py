"""Plugin "file": a local or mounted POSIX tree (NFS, CephFS, a Lustre mount of the SE).

The path checks of the base class are lexical; here symlinks can still lead
out, so every path is also resolved and must stay under the resolved base.
Uploads land under a temporary name in the target directory and are renamed
into place, so a crash never leaves a half file under the final name.

Checksums: the ADLER32 recorded in the file's extended attributes (as XRootD
or StoRM keep it) is reported by ``stat`` and announced to a staging, which
then verifies the bytes it receives. A file without one has it computed
once, when first asked, and recorded (unless the element is read-only): so
an upload is verified against what really landed on the disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from seproxy.storage.base import CHUNK_SIZE, FileInfo, PathRefused, ReadStream, StorageElement
from seproxy.storage.checksum_xattrs import record_adler32, recorded_adler32


class LocalStorage(StorageElement):
    plugin = "file"
    schemes = ("file",)
    base_form = "an absolute directory such as /storage/se1"

    def normalize(self, pfn: str) -> str:
        path = self.clean_path(pfn)
        self._resolve(path)
        return path

    def _resolve(self, path: str) -> str:
        """The real location of ``path``, refused when a symlink leads outside the base."""
        root = os.path.realpath(self._storage_path("/"))
        real = os.path.realpath(self._storage_path(path))
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise self._refused(path, "a symlink leads outside the element's base")
        return real

    @contextmanager
    def _posix(self, path: str) -> Iterator[None]:
        """Re-raise OS errors naming the element path instead of the local one."""
        try:
            yield
        except OSError as exc:
            if exc.errno is None:
                raise
            raise self._error(exc.errno, path, exc.strerror or os.strerror(exc.errno)) from None

    def _info(self, path: str, result: os.stat_result) -> FileInfo:
        is_dir = stat.S_ISDIR(result.st_mode)
        special = "" if is_dir or stat.S_ISREG(result.st_mode) else _kind(result.st_mode)
        return FileInfo(path, 0 if is_dir else result.st_size, is_dir, result.st_mtime, special=special)

    def _stat(self, path: str) -> FileInfo:
        with self._posix(path):
            return self._info(path, os.stat(self._storage_path(path)))

    def _checksums(self, path: str) -> dict[str, str]:
        with self._opened(path) as fd:
            adler32 = recorded_adler32(fd)
            if adler32 is None:
                checksum = 1
                while chunk := os.read(fd, CHUNK_SIZE):
                    checksum = zlib.adler32(chunk, checksum)
                adler32 = f"{checksum:08x}"
                if not self.settings.read_only:
                    record_adler32(fd, adler32)
        return {"adler32": adler32}

    @contextmanager
    def _opened(self, path: str) -> Iterator[int]:
        """A read descriptor of the regular file at ``path``, errors naming the element path."""
        with self._posix(path):
            # The path was resolved and checked; O_NOFOLLOW keeps a link swapped in since from being followed,
            # O_NONBLOCK a FIFO swapped in from blocking the open (it is refused below, before any read).
            fd = os.open(self._resolve(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                mode = os.fstat(fd).st_mode
                if not stat.S_ISREG(mode):
                    raise self._not_regular(path, _kind(mode))
                os.set_blocking(fd, True)
                yield fd
            finally:
                os.close(fd)

    def _listdir(self, path: str) -> list[FileInfo]:
        prefix = path.rstrip("/")
        entries = []
        with self._posix(path), os.scandir(self._storage_path(path)) as listing:
            for entry in listing:
                child = f"{prefix}/{entry.name}"
                try:
                    self._resolve(child)
                    entries.append(self._info(child, entry.stat()))
                except (PathRefused, FileNotFoundError):
                    continue  # leads outside the base, or vanished while listing
        return sorted(entries, key=lambda info: info.path)

    def _mkdir(self, path: str) -> None:
        with self._posix(path):
            os.makedirs(self._storage_path(path), exist_ok=True)

    def _rmdir(self, path: str) -> None:
        with self._posix(path):
            os.rmdir(self._storage_path(path))

    def _remove(self, path: str) -> None:
        with self._posix(path):
            os.unlink(self._storage_path(path))

    def _remove_tree(self, path: str) -> None:
        with self._posix(path):
            shutil.rmtree(self._storage_path(path))

    @contextmanager
    def _open_read(self, path: str) -> Iterator[ReadStream]:
        with self._opened(path) as fd, os.fdopen(fd, "rb", buffering=0, closefd=False) as stream:
            info = os.fstat(fd)
            adler32 = recorded_adler32(fd)
            checksums = {"adler32": adler32} if adler32 else {}
            yield ReadStream(info.st_size, checksums, info.st_mtime, self._chunks(stream, path))

    def _chunks(self, stream: BinaryIO, path: str) -> Iterator[bytes]:
        with self._posix(path):
            while chunk := stream.read(CHUNK_SIZE):
                yield chunk

    def _write(self, stream: Any, size: int, path: str) -> None:
        target = self._resolve(path)
        directory, name = os.path.split(target)
        with self._posix(path):
            fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
        try:
            with self._posix(path), os.fdopen(fd, "wb"):
                os.fchmod(fd, 0o644)
                copied = 0  # the kernel copies: the bytes never enter Python
                while copied < size and (sent := os.sendfile(fd, stream.fileno(), copied, size - copied)):
                    copied += sent
                os.fsync(fd)
            if copied != size:
                raise self._error(errno.EIO, path, f"the local file gave {copied} of {size} bytes")
            with self._posix(path):
                os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise


def _kind(mode: int) -> str:
    """What a non-regular entry is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"

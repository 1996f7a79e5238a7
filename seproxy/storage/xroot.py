"""Plugin "xroot": XRootD storage (EOS, dCache and XRootD doors) through the official bindings.

The bindings (PyPI package ``xrootd``) are imported only when an xroot
element is configured, so the service runs without them. The XRootD client
takes its credentials from the process environment (``X509_USER_PROXY``,
``X509_CERT_DIR``, ``BEARER_TOKEN_FILE``, ...), so every xroot element of
one process must agree on them; a conflict is a configuration error.
"""

from __future__ import annotations

import errno
import functools
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from seproxy.config import StorageElementSettings
from seproxy.storage.base import (
    CHUNK_SIZE,
    FileInfo,
    ReadStream,
    StorageElement,
    StorageUnavailable,
)
from seproxy.transfer.checksum_headers import canonical_adler32

# Server error codes (XProtocol kXR_*) that have a precise errno; the rest become EIO.
_SERVER_ERRNO = {
    3002: errno.ENAMETOOLONG,  # kXR_ArgTooLong
    3009: errno.ENOSPC,  # kXR_NoSpace
    3010: errno.EACCES,  # kXR_NotAuthorized
    3011: errno.ENOENT,  # kXR_NotFound
    3016: errno.EISDIR,  # kXR_isDirectory
    3018: errno.EEXIST,  # kXR_ItExists
    3021: errno.EDQUOT,  # kXR_overQuota
    3025: errno.EROFS,  # kXR_fsReadOnly
    3030: errno.EACCES,  # kXR_AuthFailed
}
_ERROR_RESPONSE = 400  # XrdCl errErrorResponse: the server answered with one of the codes above
_AUTH_FAILED = 204  # XrdCl errAuthFailed
_TIMEOUTS = {103, 206}  # XrdCl errSocketTimeout, errOperationExpired
_CREDENTIAL_VARIABLES = {
    "x509_proxy": "X509_USER_PROXY",
    "x509_cert": "X509_USER_CERT",
    "x509_key": "X509_USER_KEY",
    "bearer_token_file": "BEARER_TOKEN_FILE",
    "ca_dir": "X509_CERT_DIR",
}


@functools.cache
def _bindings() -> tuple[ModuleType, ModuleType]:
    try:
        from XRootD import client
        from XRootD.client import flags
    except ImportError as exc:
        raise ImportError(
            "the xroot storage plugin needs the XRootD Python bindings, PyPI package 'xrootd': "
            "pip install 'seproxy[xroot]'"
        ) from exc
    if "XRD_TIMEOUTRESOLUTION" not in os.environ:
        # XrdCl checks timeouts every 15 s by default, which stretches a 5 s timeout to 15 s.
        client.EnvPutInt("TimeoutResolution", 1)
    return client, flags


class XRootStorage(StorageElement):
    plugin = "xroot"
    schemes = ("root", "roots", "xroot")
    base_form = "a root:// URL such as root://eos.example.org//eos/example/data"

    def __init__(
        self, name: str, settings: StorageElementSettings, *, default_ca_dir: Path | None = None
    ) -> None:
        super().__init__(name, settings, default_ca_dir=default_ca_dir)
        self._client, self._flags = _bindings()
        self._claim_credentials(default_ca_dir)
        self._fs = self._client.FileSystem(f"{self._scheme}://{self._netloc}")
        self._timeout = max(1, math.ceil(self.settings.timeout))  # XrdCl counts whole seconds

    def _claim_credentials(self, default_ca_dir: Path | None) -> None:
        for key, variable in _CREDENTIAL_VARIABLES.items():
            value = getattr(self.settings, key)
            if value is None:
                if key == "ca_dir" and default_ca_dir is not None:
                    os.environ.setdefault(variable, str(default_ca_dir))  # the service default yields
                continue
            current = os.environ.setdefault(variable, str(value))
            if current != str(value):
                raise self._config_error(
                    key, f"the XRootD client reads {variable} from the process environment, where it is {current}"
                )

    def _url_path(self, storage_path: str) -> str:
        return "/" + storage_path  # root://host//absolute/path

    def _call(self, path: str, operation: Callable[..., tuple[Any, Any]], *args: Any) -> Any:
        """Run one XrdCl call; a failed status becomes the matching OSError."""
        status, response = operation(*args, timeout=self._timeout)
        if status.ok:
            return response
        detail = status.message.strip()
        message = f"{self.name}: {path}: {detail}"
        if status.code == _ERROR_RESPONSE:
            raise OSError(_SERVER_ERRNO.get(status.errno, errno.EIO), message)
        if status.code == _AUTH_FAILED:
            raise PermissionError(errno.EACCES, message)
        # XrdCl reports a server that refuses connections as an expired operation: say where, and how long.
        where = f"{self.name}: {path}: storage at {self._netloc}"
        if status.code in _TIMEOUTS:
            raise StorageUnavailable(errno.ETIMEDOUT, f"{where}: no answer within {self._timeout} s ({detail})")
        raise StorageUnavailable(errno.EHOSTUNREACH, f"{where}: {detail}")

    def _info(self, path: str, stat: Any) -> FileInfo:
        is_dir = bool(stat.flags & self._flags.StatInfoFlags.IS_DIR)
        # The server flags what is neither a file nor a directory (a FIFO, a device) as "other".
        special = "a special file (FIFO, device or the like)" if stat.flags & self._flags.StatInfoFlags.OTHER else ""
        return FileInfo(path, 0 if is_dir else stat.size, is_dir, float(stat.modtime), special=special)

    # -- the primitives ----------------------------------------------------

    def _stat(self, path: str) -> FileInfo:
        return self._info(path, self._call(path, self._fs.stat, self._storage_path(path)))

    def _checksums(self, path: str) -> dict[str, str]:
        """The server's adler32 (``xrootd.chksum adler32``); none when it keeps no checksums."""
        try:
            answer = self._call(path, self._fs.query, self._flags.QueryCode.CHECKSUM, self._storage_path(path))
        except OSError as exc:
            if exc.errno == errno.EIO:  # a server error without a precise code: no checksum to offer
                return {}
            raise
        algorithm, _, value = answer.decode(errors="replace").strip("\0 \n").partition(" ")
        checksum = canonical_adler32(value) if algorithm.lower() == "adler32" else None
        return {"adler32": checksum} if checksum else {}

    def _listdir(self, path: str) -> list[FileInfo]:
        try:
            listing = self._call(path, self._fs.dirlist, self._storage_path(path), self._flags.DirListFlags.STAT)
        except OSError as exc:
            # Servers answer a generic error for a file; tell the caller what it really was.
            if exc.errno == errno.EIO and not self._stat(path).is_dir:
                raise self._error(errno.ENOTDIR, path, "not a directory") from None
            raise
        prefix = path.rstrip("/")
        return sorted((self._info(f"{prefix}/{entry.name}", entry.statinfo) for entry in listing), key=lambda i: i.path)

    def _mkdir(self, path: str) -> None:
        self._call(path, self._fs.mkdir, self._storage_path(path), self._flags.MkDirFlags.MAKEPATH)

    def _rmdir(self, path: str) -> None:
        self._call(path, self._fs.rmdir, self._storage_path(path))

    def _remove(self, path: str) -> None:
        self._call(path, self._fs.rm, self._storage_path(path))

    def _open(self, path: str, flags: int, mode: int = 0) -> Any:
        remote = self._client.File()
        self._call(path, remote.open, self.url(path), flags, mode)
        return remote

    @contextmanager
    def _open_read(self, path: str) -> Iterator[ReadStream]:
        remote = self._open(path, self._flags.OpenFlags.READ)
        try:
            info = self._info(path, self._call(path, remote.stat))
            yield ReadStream(info.size, self._checksums(path), info.mtime, self._chunks(remote, path))
        finally:
            remote.close(timeout=self._timeout)

    def _chunks(self, remote: Any, path: str) -> Iterator[bytes]:
        offset = 0
        while chunk := self._call(path, remote.read, offset, CHUNK_SIZE):
            offset += len(chunk)
            yield chunk

    def _write(self, stream: Any, size: int, path: str) -> None:
        flags, mode = self._flags.OpenFlags, self._flags.AccessMode
        # POSC: the server drops the file unless we close it after the last write.
        create = (path, flags.NEW | flags.POSC, mode.UR | mode.UW | mode.GR | mode.OR)
        try:
            remote = self._open(*create)
        except FileExistsError:
            # Removed, not truncated: xrootd keeps the old checksum of a file rewritten within a second.
            self._remove(path)
            remote = self._open(*create)
        try:
            offset = 0
            while chunk := stream.read(CHUNK_SIZE):
                self._call(path, remote.write, chunk, offset)
                offset += len(chunk)
            self._call(path, remote.close)
        finally:
            if remote.is_open():
                remote.close(timeout=self._timeout)

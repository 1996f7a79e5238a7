"""The one interface every storage-element plugin offers to the cache and the RPC handler.

Paths arrive from the wire, so the base class owns everything that must not
differ between protocols: it cleans and confines every path (``normalize``),
refuses writes on read-only elements before any I/O, checks downloads and
uploads against what the storage announced, and walks trees. A plugin only
implements the underscored primitives, and only ever sees clean paths.

Errors are ``OSError`` subclasses carrying an errno, so the RPC edge can turn
any of them into ``S_ERROR(errno, message)`` without knowing the plugin. Their
messages name the element and the path, never a credential.
"""

from __future__ import annotations

import errno
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol
from urllib.parse import SplitResult, urlsplit

from seproxy.config import ConfigError, StorageElementSettings
from seproxy.transfer.checksum_headers import canonical_adler32

# Large enough that per-chunk overhead vanishes, small enough for many concurrent streams.
CHUNK_SIZE = 4 * 1024 * 1024
MAX_PATH_LENGTH = 4096

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# PFNs name a protocol in more than one way; compare them by family.
_SCHEME_ALIASES = {"xroot": "root", "davs": "https", "dav": "http"}
_DEFAULT_PORTS = {"root": 1094, "roots": 1094, "https": 443, "http": 80}


def path_text_problem(text: str) -> str | None:
    """What makes ``text`` unfit to name a file on any storage (too long, control characters), if anything."""
    if len(text) > MAX_PATH_LENGTH:
        return f"longer than {MAX_PATH_LENGTH} characters"
    if _CONTROL_CHARS.search(text):
        return "contains a NUL or control character"
    return None


class PathRefused(PermissionError):
    """A path that could leave the element or confuse a storage system."""


class ReadOnlyStorage(PermissionError):
    """A write on an element that the operator configured read-only."""


class StorageUnavailable(OSError):
    """The storage could not be asked at all (down, timed out, 5xx, TLS): worth trying another replica."""


class ChecksumMismatch(OSError):
    """The bytes on the storage are not the bytes that were sent."""


@dataclass(frozen=True)
class FileInfo:
    """What a storage tells about one entry; ``checksums`` holds only what it reports cheaply."""

    path: str
    size: int
    is_dir: bool
    mtime: float | None
    checksums: dict[str, str] = field(default_factory=dict)
    # What the entry is when it is neither a regular file nor a directory ("a FIFO", "a socket"...):
    # such entries are listed and described, never opened (a FIFO's open or read can block forever).
    special: str = ""

    def as_metadata(self) -> dict[str, Any]:
        """The dict DIRAC's getFileMetadata returns, so DIRAC clients read it unchanged."""
        metadata: dict[str, Any] = {
            "Size": self.size,
            "Directory": self.is_dir,
            "File": not self.is_dir and not self.special,
            "ModTime": None
            if self.mtime is None
            else datetime.fromtimestamp(self.mtime, UTC).replace(tzinfo=None),
            "Checksum": self.checksums.get("adler32", ""),
        }
        if not self.is_dir:
            # Every plugin here is disk storage: a file that exists is online.
            metadata.update(Cached=1, Migrated=0, Lost=0, Unavailable=0, Accessible=True)
        return metadata


class DownloadSink(Protocol):
    """Where a download goes (the cache's staging writer).

    ``write`` must be done with ``data`` when it returns: a plugin may hand on a view of a buffer
    that it fills again with the next bytes (copying each block would cost as much as receiving it).
    """

    def expect(self, size: int | None, checksums: dict[str, str], mtime: float | None = None) -> None: ...

    def write(self, data: bytes | memoryview) -> None: ...


class ReadStream(NamedTuple):
    """An opened remote file: what the source announced, then its bytes."""

    size: int | None
    checksums: dict[str, str]
    mtime: float | None
    chunks: Iterator[bytes | memoryview]


class StorageElement(ABC):
    """One configured storage element, reached through one protocol."""

    plugin: ClassVar[str]
    # URL schemes this plugin's ``base`` may use, and an example for error messages.
    schemes: ClassVar[tuple[str, ...]]
    base_form: ClassVar[str]

    def __init__(
        self, name: str, settings: StorageElementSettings, *, default_ca_dir: Path | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        parts = urlsplit(settings.base if "://" in settings.base else f"file://{settings.base}")
        if (
            parts.scheme not in self.schemes
            or bool(parts.netloc) == (parts.scheme == "file")
            or parts.query
            or parts.fragment
            or parts.username
            or ".." in parts.path.split("/")
        ):
            raise self._config_error("base", f"expected {self.base_form}, got {settings.base!r}")
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._address = self._host_port(parts)
        # "" for the storage's root, else "/a/b": the element's paths are appended to it.
        self._base_path = "".join(f"/{part}" for part in self._parts(parts.path, settings.base))

    def _config_error(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"storage_elements.{self.name}.{key}: {what}")

    # -- paths -------------------------------------------------------------

    def normalize(self, pfn: str) -> str:
        """The clean absolute path inside the element for a path or for a URL of this element, where
        every operation on the storage goes (a plugin may check more than the text: a symlink)."""
        return self.clean_path(pfn)

    def clean_path(self, pfn: str) -> str:
        """``normalize`` from the text alone: the cache's key, found without asking the storage."""
        if not isinstance(pfn, str):
            raise self._refused(repr(pfn), "a path must be a string")
        self._check_text(pfn)
        if "://" in pfn:
            relative = self._strip_base(self._path_from_url(pfn), pfn)
        else:
            relative = self._parts(pfn, pfn)
        return "/" + "/".join(relative)

    def url(self, path: str) -> str:
        """The full URL (PFN) of ``path`` on this element."""
        return f"{self._scheme}://{self._netloc}{self._url_path(self._storage_path(self.normalize(path)))}"

    def _storage_path(self, path: str) -> str:
        """Where a clean element path lives in the storage's own namespace."""
        return self._base_path + path if path != "/" else self._base_path or "/"

    def _refused(self, shown: str, why: str) -> PathRefused:
        return PathRefused(errno.EPERM, f"{self.name}: {shown[:200]}: refused: {why}")

    def _error(self, code: int, path: str, what: str) -> OSError:
        """An OSError whose class follows the errno (ENOENT gives FileNotFoundError, ...)."""
        return OSError(code, f"{self.name}: {path}: {what}")

    def _not_regular(self, path: str, what: str) -> OSError:
        return self._error(errno.EPERM, path, f"is {what}, not a regular file: only regular files are staged")

    def _check_text(self, text: str) -> None:
        problem = path_text_problem(text)
        if problem:
            raise self._refused(repr(text) if _CONTROL_CHARS.search(text) else text, problem)

    def _parts(self, path: str, shown: str) -> list[str]:
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self._refused(shown, "'..' is not allowed in a path")
        return parts

    def _path_from_url(self, url: str) -> str:
        try:
            parts = urlsplit(url)
            address = self._host_port(parts)
        except ValueError:
            raise self._refused("<URL>", "not a valid URL") from None
        if _SCHEME_ALIASES.get(parts.scheme, parts.scheme) != _SCHEME_ALIASES.get(self._scheme, self._scheme):
            raise self._refused(f"{parts.scheme}://…", f"not a {self._scheme} URL of this element")
        if parts.username or parts.password:
            raise self._refused(f"{parts.scheme}://…", "URLs with user credentials are not accepted")
        if address != self._address:
            raise self._refused(f"{parts.scheme}://{parts.hostname}:{address[1]}", "another storage's URL")
        if parts.query or parts.fragment:
            raise self._refused(parts.path, "query strings and fragments are not accepted")
        path = self._unquote(parts.path)
        self._check_text(path)
        return path

    def _strip_base(self, path: str, shown: str) -> list[str]:
        """The element-relative parts of a storage path (refused when outside the base)."""
        parts = self._parts(path, shown)
        base = self._parts(self._base_path, self._base_path)
        if parts[: len(base)] != base:
            raise self._refused(shown, f"outside the element's base {self._base_path or '/'}")
        return parts[len(base) :]

    @staticmethod
    def _host_port(parts: SplitResult) -> tuple[str | None, int | None]:
        return parts.hostname, parts.port or _DEFAULT_PORTS.get(_SCHEME_ALIASES.get(parts.scheme, parts.scheme))

    def _url_path(self, storage_path: str) -> str:
        """How a storage path is written into a URL (plugins quote or prefix it)."""
        return storage_path

    def _unquote(self, url_path: str) -> str:
        """The inverse of ``_url_path`` for the path of an incoming URL."""
        return url_path

    def _writable(self, path: str) -> str:
        clean = self.normalize(path)
        if self.settings.read_only:
            raise ReadOnlyStorage(errno.EROFS, f"{self.name}: {clean}: the element is read-only")
        return clean

    # -- the operations the cache and the RPC handler call -----------------

    def stat(self, path: str) -> FileInfo:
        path = self.normalize(path)
        info = self._stat(path)
        return info if info.is_dir or info.special else replace(info, checksums=self._checksums(path))

    def exists(self, path: str) -> bool:
        try:
            self._stat(self.normalize(path))
        except FileNotFoundError:
            return False
        return True

    def listdir(self, path: str) -> list[FileInfo]:
        return self._listdir(self.normalize(path))

    def mkdir(self, path: str) -> None:
        """Create ``path`` and its parents; an existing directory is fine."""
        path = self._writable(path)
        if path != "/":
            self._mkdir(path)

    def rmdir(self, path: str, recursive: bool = False) -> None:
        path = self._writable(path)
        if path == "/":
            raise self._refused(path, "the element's base directory is never removed")
        if not self._stat(path).is_dir:
            raise self._error(errno.ENOTDIR, path, "not a directory")
        if recursive:
            self._remove_tree(path)
        elif self._listdir(path):
            raise self._error(errno.ENOTEMPTY, path, "directory not empty")
        else:
            self._rmdir(path)

    def remove(self, path: str) -> None:
        path = self._writable(path)
        # Checked here because a WebDAV DELETE of a collection would remove a whole tree.
        if self._stat(path).is_dir:
            raise self._error(errno.EISDIR, path, "is a directory (use rmdir)")
        self._remove(path)

    def download(self, path: str, sink: DownloadSink) -> FileInfo:
        """Stream the file into ``sink``, checking the byte count against what the source announced."""
        path = self.normalize(path)
        info = self._stat(path)
        if info.is_dir:
            raise self._error(errno.EISDIR, path, "is a directory")
        if info.special:
            raise self._not_regular(path, info.special)
        received = 0
        with self._open_read(path) as stream:
            sink.expect(stream.size, stream.checksums, stream.mtime)
            for chunk in stream.chunks:
                received += len(chunk)
                if stream.size is not None and received > stream.size:
                    break
                sink.write(chunk)
        if stream.size is not None and received != stream.size:
            raise self._error(errno.EIO, path, f"received {received} bytes, the storage announced {stream.size}")
        return FileInfo(path, received, False, stream.mtime, stream.checksums)

    def upload(self, local_path: Path, path: str, *, checksums: dict[str, str] | None = None) -> FileInfo:
        """Store a local file, then check what landed; a bad copy is removed, never left behind."""
        path = self._writable(path)
        if path == "/":
            raise self._error(errno.EISDIR, path, "is the element's base directory")
        self.mkdir(path.rsplit("/", 1)[0] or "/")
        with open(local_path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            self._write(stream, size, path)
        info = self.stat(path)
        expected = canonical_adler32((checksums or {}).get("adler32", ""))
        stored = info.checksums.get("adler32")
        problem = None
        if info.size != size:
            problem = f"size on the storage {info.size}, sent {size}"
        elif expected and stored and stored != expected:
            problem = f"adler32 on the storage {stored}, expected {expected}"
        if problem:
            try:
                self._remove(path)
            except OSError:
                pass  # the mismatch is the error worth reporting
            raise ChecksumMismatch(errno.EIO, f"{self.name}: {path}: upload corrupted ({problem}); removed")
        return info

    # -- what a plugin implements (paths are clean) ------------------------

    @abstractmethod
    def _stat(self, path: str) -> FileInfo:
        """Size, type and mtime; checksums may be left empty (see ``_checksums``)."""

    def _checksums(self, path: str) -> dict[str, str]:
        """Checksums the storage keeps for a file (none by default)."""
        return {}

    @abstractmethod
    def _listdir(self, path: str) -> list[FileInfo]: ...

    @abstractmethod
    def _mkdir(self, path: str) -> None:
        """Create ``path`` and any missing parents; fine if it exists as a directory."""

    @abstractmethod
    def _rmdir(self, path: str) -> None:
        """Remove an empty directory."""

    @abstractmethod
    def _remove(self, path: str) -> None:
        """Remove a file."""

    def _remove_tree(self, path: str) -> None:
        """Remove a directory and all it holds; plugins with a native recursive delete override this."""
        for entry in self._listdir(path):
            if entry.is_dir:
                self._remove_tree(entry.path)
            else:
                self._remove(entry.path)
        self._rmdir(path)

    @abstractmethod
    def _open_read(self, path: str) -> AbstractContextManager[ReadStream]: ...

    @abstractmethod
    def _write(self, stream: Any, size: int, path: str) -> None:
        """Store ``size`` bytes read from the binary file ``stream`` at ``path`` (its parent exists)."""

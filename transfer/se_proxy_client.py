"""The StorageElementProxy's client: its RPC methods by name, and the two-step dances done for the user.

Getting a file from a storage element through the proxy is two calls,
``prepareFile`` (the service stages it into its cache) then ``receiveFile``;
putting one is ``sendFile`` then ``uploadFile`` (the service pushes it on).
``getFile`` and ``putFile`` do both steps, for one file or a list, and
answer as DIRAC's StorageElement does: ``S_OK({"Successful": {pfn: ...},
"Failed": {pfn: message}})``, so that one bad file does not hide the others.

One rule for what exists, here and in the ``seproxy get``/``put`` commands
(as in gfal-copy and xrdcp): an existing destination, local or on the
storage element, is replaced only when asked (``overwrite=True``, ``-f``).
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from seproxy.transfer.returnvalues import S_ERROR, S_OK, ReturnValue
from seproxy.transfer.transfer_client import PUT_AREA, LocalFile, Progress, TransferClient

FileProgress = Callable[[str, int, int | None], None]
"""Progress of a bulk transfer: (PFN, bytes done, total bytes or None)."""

LocalPath = str | os.PathLike[str]
Item = TypeVar("Item")


class StorageElementProxyClient(TransferClient):
    """A client of ``DataManagement/StorageElementProxy``: takes what ``TransferClient`` takes."""

    def prepareFile(self, se: str, pfn: str) -> ReturnValue:
        """Stage ``pfn`` from ``se`` into the cache: S_OK({"FileId", "Size", "Checksum", "ChecksumType", "xxh3"})."""
        return self.executeRPC("prepareFile", se, pfn)

    def uploadFile(self, se: str, pfn: str) -> ReturnValue:
        """Push the file sent as ``putFile/<basename of pfn>`` to ``se`` at ``pfn``: S_OK({"PFN", "Size", "Checksum"})."""
        return self.executeRPC("uploadFile", se, pfn)

    def callProxyMethod(
        self, se: str, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> ReturnValue:
        """A storage operation by name (``exists``, ``listDirectory``, ``removeFile``, ...), DIRAC's bulk shape."""
        return self.executeRPC("callProxyMethod", se, name, list(args), dict(kwargs or {}))

    def prepareFileForHTTP(self, lfns: str | Sequence[str]) -> ReturnValue:
        """Stage by logical file name for plain HTTP: S_OK with ``HttpURL`` (one tar for several files)."""
        return self.executeRPC("prepareFileForHTTP", lfns if isinstance(lfns, str) else list(lfns))

    def getFile(
        self,
        se: str,
        pfns: str | Sequence[str],
        destination: LocalFile,
        *,
        overwrite: bool = False,
        progress: FileProgress | None = None,
    ) -> ReturnValue:
        """Fetch ``pfns`` from ``se`` into ``destination``.

        One PFN goes to ``destination`` (a path, an open binary file, or a
        directory to keep its name in); several go into the directory
        ``destination``. A path ending with ``/`` is a directory, created
        (with its parents) if missing. An existing local file is kept, and
        that PFN fails, unless ``overwrite`` is true. ``Successful`` maps
        each PFN to {"Path", "Size", "xxh3", "Checksum"}.
        """
        try:
            if isinstance(destination, (str, os.PathLike)) and os.fspath(destination).endswith(os.sep):
                os.makedirs(destination, exist_ok=True)
            targets = _download_targets(pfns, destination)
        except ValueError as exc:
            return S_ERROR(errno.EINVAL, str(exc))
        except OSError as exc:
            return S_ERROR(exc.errno or errno.EIO, f"{os.fspath(destination)}: {exc.strerror}")  # type: ignore[arg-type]

        def get(pfn: str, target: LocalFile) -> ReturnValue:
            if not overwrite and isinstance(target, (str, os.PathLike)) and os.path.lexists(target):
                return S_ERROR(errno.EEXIST, os.fspath(target))
            return self._get_one(se, pfn, target, _per_file(progress, pfn))

        return _bulk(targets, get)

    def putFile(
        self,
        sources: LocalFile | Sequence[LocalPath],
        se: str,
        pfn: str,
        *,
        overwrite: bool = False,
        progress: FileProgress | None = None,
    ) -> ReturnValue:
        """Store ``sources`` on ``se`` at ``pfn``.

        One source (a path or an open binary file) becomes ``pfn``; a list of
        paths goes into the directory ``pfn``, each under its own name. A
        file already on the storage is kept, and that PFN fails, unless
        ``overwrite`` is true. ``Successful`` maps each PFN to {"PFN" (the storage URL),
        "Size", "Checksum" (ADLER32), "xxh3"}.
        """
        try:
            targets = _upload_targets(sources, pfn)
        except ValueError as exc:
            return S_ERROR(errno.EINVAL, str(exc))
        existing: set[str] = set()
        if not overwrite:
            found = self.callProxyMethod(se, "exists", [list(targets)])
            if not found["OK"]:
                return found
            existing = {path for path, exists in found["Value"]["Successful"].items() if exists}

        def put(target: str, source: LocalFile) -> ReturnValue:
            if target in existing:
                return S_ERROR(errno.EEXIST, f"{se}: {target}")
            return self._put_one(se, source, target, _per_file(progress, target))

        return _bulk(targets, put)

    def _get_one(self, se: str, pfn: str, destination: LocalFile, progress: Progress | None) -> ReturnValue:
        prepared = self.prepareFile(se, pfn)
        if not prepared["OK"]:
            return prepared
        described = prepared["Value"]
        received = self._receive(destination, described["FileId"], "", progress=progress, expected=described)
        if received["OK"]:
            path = os.path.abspath(destination) if isinstance(destination, (str, os.PathLike)) else None
            received["Value"]["Path"] = path
        return received

    def _put_one(self, se: str, source: LocalFile, pfn: str, progress: Progress | None) -> ReturnValue:
        sent = self.sendFile(source, f"{PUT_AREA}/{posixpath.basename(pfn)}", progress=progress)
        if not sent["OK"]:
            return sent
        uploaded = self.uploadFile(se, pfn)
        if not uploaded["OK"]:
            return uploaded
        return S_OK({**uploaded["Value"], "xxh3": sent["Value"]["xxh3"]})


def _per_file(progress: FileProgress | None, pfn: str) -> Progress | None:
    return None if progress is None else functools.partial(progress, pfn)


def _bulk(items: Mapping[str, Item], transfer: Callable[[str, Item], ReturnValue]) -> ReturnValue:
    """Run ``transfer`` for each PFN; DIRAC's Successful/Failed result."""
    successful: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for pfn, item in items.items():
        result = transfer(pfn, item)
        if result["OK"]:
            successful[pfn] = result["Value"]
        else:
            failed[pfn] = result["Message"]
    return S_OK({"Successful": successful, "Failed": failed})


def _download_targets(pfns: str | Sequence[str], destination: LocalFile) -> dict[str, LocalFile]:
    """Where each PFN goes: as ``cp`` does, into a directory under its own name."""
    into_directory = isinstance(destination, (str, os.PathLike)) and os.path.isdir(destination)
    if isinstance(pfns, str):
        return {pfns: os.path.join(destination, _name(pfns)) if into_directory else destination}  # type: ignore[arg-type]
    if not into_directory:
        raise ValueError(f"several files go into a directory, and {destination} is not one")
    paths = [os.path.join(destination, _name(pfn)) for pfn in pfns]  # type: ignore[arg-type]
    return dict(zip(pfns, _distinct(paths)))


def _upload_targets(sources: LocalFile | Sequence[LocalPath], pfn: str) -> dict[str, LocalFile]:
    """The PFN of each source: ``pfn`` itself for one, ``pfn/<name>`` for each of a list (or for one
    when ``pfn`` ends with /, as ``cp`` into a directory)."""
    if isinstance(sources, (str, os.PathLike)) or hasattr(sources, "read"):
        if not pfn.endswith("/"):
            return {pfn: sources}  # type: ignore[dict-item]
        if not isinstance(sources, (str, os.PathLike)):
            raise ValueError(f"{pfn} is a directory: an open file needs a PFN that names it")
        sources = [sources]
    pfns = [posixpath.join(pfn, _name(os.fspath(source))) for source in sources]
    return dict(zip(_distinct(pfns), sources))


def _distinct(places: list[str]) -> list[str]:
    """``places``, if no two files would go to the same one."""
    repeated = [place for place, count in Counter(places).items() if count > 1]
    if repeated:
        raise ValueError(f"two files would go to {repeated[0]}")
    return places


def _name(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    if not name:
        raise ValueError(f"{path!r} has no file name")
    return name

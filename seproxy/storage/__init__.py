"""Storage-element plugins: one interface (base.py), one class per protocol, a factory."""

from seproxy.storage.base import (
    ChecksumMismatch,
    DownloadSink,
    FileInfo,
    PathRefused,
    ReadOnlyStorage,
    StorageElement,
    StorageUnavailable,
)
from seproxy.storage.factory import make_storage_element

__all__ = [
    "ChecksumMismatch",
    "DownloadSink",
    "FileInfo",
    "PathRefused",
    "ReadOnlyStorage",
    "StorageElement",
    "StorageUnavailable",
    "make_storage_element",
]

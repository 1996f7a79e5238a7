"""The staging cache: layout on disk, index, eviction and purge."""

from seproxy.cache.cache import Cache, Fetch, NewEntry
from seproxy.cache.entry import Area, Entry, ReadLease, Usage
from seproxy.cache.purge import PurgeReport, PurgeRule, purge
from seproxy.cache.writer import StagingWriter, VerificationError

__all__ = [
    "Area",
    "Cache",
    "Entry",
    "Fetch",
    "NewEntry",
    "PurgeReport",
    "PurgeRule",
    "ReadLease",
    "StagingWriter",
    "Usage",
    "VerificationError",
    "purge",
]

"""The staging cache: layout on disk, index, eviction and purge."""

from seproxy.cache.cache import Cache, Fetch, NewEntry
from seproxy.cache.entry import Area, Entry, Growing, ReadLease, Usage
from seproxy.cache.follow import Follower, StagingFailed
from seproxy.cache.index import OutdatedIndex
from seproxy.cache.purge import PurgeReport, PurgeRule, purge, purging
from seproxy.cache.writer import StagingWriter, VerificationError

__all__ = [
    "Area",
    "Cache",
    "Entry",
    "Fetch",
    "Follower",
    "Growing",
    "NewEntry",
    "OutdatedIndex",
    "PurgeReport",
    "PurgeRule",
    "ReadLease",
    "StagingFailed",
    "StagingWriter",
    "Usage",
    "VerificationError",
    "purge",
    "purging",
]

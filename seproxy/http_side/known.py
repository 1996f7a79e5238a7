"""What the URLs asked of this process resolved to, remembered so that a repeat request skips the work.

A popular URL is fetched thousands of times, and each time the same key is
checked, the same link looked up and the same representation and headers
made. Here a URL's path, once its key checked out and its link was found,
maps to that link and its key (``Known``); the answer made from the link's
cache entries (``Prepared``) is kept beside it for as long as the read
leases hand out the same entries.

Nothing goes stale unseen: a link never changes (single-use links, whose
mark does, are never remembered); a URL is forgotten once its key expires,
so the next request is refused as before; and the entries come from
``SharedLeases`` on every request, which reads them again from the index
whenever the cache's stamp of changes moved (a copy marked stale, a
checksum recorded, a file dropped) or the lease was dropped and taken anew:
entries that differ from those the answer was prepared from mean a new answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seproxy.cache import Entry
from seproxy.http_side.body import Piece
from seproxy.http_side.digests import WANT_DIGEST, WANT_REPR_DIGEST
from seproxy.http_side.links import Link
from seproxy.http_side.representation import ASKED_BY, Representation

# URLs remembered per process (then it starts again: a few MiB at most).
REMEMBERED = 4096
DIGEST_ASKS = frozenset((WANT_DIGEST, WANT_REPR_DIGEST))
# Answers of one URL remembered by the digests asked (clients ask a handful of combinations).
DIGEST_COMBINATIONS = 8


@dataclass
class Prepared:
    """An answer's parts that depend on the files only, not on the request."""

    entries: list[Entry]
    representation: Representation
    body: list[Piece]
    # Headers beside those of the plan: the copy's staleness, its XXH3.
    extra: dict[str, str]
    # The encoded header lines of a 200, by the digests asked (``digests_asked``), once one was made:
    # every request that asks the same (and no condition or range) gets the same.
    whole: dict[tuple[str | None, str | None], bytes] = field(default_factory=dict)

    def holds(self, entries: list[Entry]) -> bool:
        """Whether ``entries`` are those this was prepared from (the same objects while the leases'
        stamp stays, compared by identity first: no field is compared then)."""
        return entries == self.entries


@dataclass
class Known:
    """A URL whose key checked out and whose link was found."""

    key: str  # for the access log: "<key id>:<link id>"
    valid_until: float  # the key's expiry, clock skew included
    link: Link
    prepared: Prepared | None = None


class KnownUrls:
    """Known URLs by path; shared by the server's threads (each operation is one atomic dict operation)."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._limit = limit
        self._known: dict[str, Known] = {}

    def get(self, path: str, now: float) -> Known | None:
        """The URL of ``path`` if known and its key not expired (an expired one is forgotten)."""
        known = self._known.get(path)
        if known is not None and now > known.valid_until:
            self._known.pop(path, None)
            return None
        return known

    def add(self, path: str, known: Known) -> None:
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[path] = known


def digests_asked(headers: dict[str, str]) -> tuple[str | None, str | None] | None:
    """The digests a request asks (``Want-Digest``, ``Want-Repr-Digest``), if that is all it asks of the
    plan; None if it also asks a condition or a range, whose answer is worked out per request."""
    asks = ASKED_BY.intersection(headers)
    if not asks <= DIGEST_ASKS:
        return None
    return headers.get(WANT_DIGEST), headers.get(WANT_REPR_DIGEST)

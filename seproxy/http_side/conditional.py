"""Validators and conditional requests (RFC 9110 §8.8 and §13).

A cached file never changes under its URL (a new staging is a new entry),
so its ETag (the xxh3 of its bytes) is strong and its ``Last-Modified`` is
the source's modification time where the storage told it, else the time
it was staged. A client that has the file asks ``If-None-Match`` or
``If-Modified-Since`` and gets 304 without the body; a resumed download
sends ``If-Range`` and gets the range only if the file is still the one it
started with.

Preconditions are evaluated in the order RFC 9110 §13.2.2 gives. A date
that does not parse is ignored, as the RFC says; an entity-tag list that
does not parse matches nothing.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from datetime import UTC

from seproxy.http_side.response import http_date

# One entity tag of a list: W/"..." or "...", with the list's commas and blanks around.
_ETAG = re.compile(r'[ \t]*(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*(?:,|$)')
# An HTTP date is 29 characters (IMF-fixdate); the obsolete forms are a little longer.
_MAX_DATE = 64


@dataclass(frozen=True)
class Validators:
    """What identifies one version of a representation."""

    etag: str  # strong, with its quotes
    modified: float  # epoch seconds

    @property
    def last_modified(self) -> str:
        return http_date(int(self.modified))

    def headers(self) -> dict[str, str]:
        return {"ETag": self.etag, "Last-Modified": self.last_modified}


def precondition(method: str, headers: dict[str, str], validators: Validators) -> int | None:
    """304 or 412 when a precondition of the request (``headers``, names lowercased) says so, else None."""
    if "if-match" in headers:
        if not _matches(headers["if-match"], validators.etag, weak=False):
            return 412
    elif (since := _date(headers.get("if-unmodified-since"))) is not None and int(validators.modified) > since:
        return 412
    safe = method in ("GET", "HEAD")
    if "if-none-match" in headers:
        if _matches(headers["if-none-match"], validators.etag, weak=True):
            return 304 if safe else 412
    elif safe and (since := _date(headers.get("if-modified-since"))) is not None and int(validators.modified) <= since:
        return 304
    return None


def range_applies(headers: dict[str, str], validators: Validators) -> bool:
    """Whether ``Range`` is to be honoured: always without ``If-Range``, else only for the
    same version (a strong entity tag, or exactly the ``Last-Modified`` date)."""
    condition = headers.get("if-range")
    if condition is None:
        return True
    condition = condition.strip(" \t")
    if condition.startswith(('"', "W/")):
        return condition == validators.etag  # W/ tags never match: If-Range compares strongly
    return _date(condition) == int(validators.modified)


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` list holds ``etag`` (``*`` holds every tag)."""
    if header.strip(" \t") == "*":
        return True
    position = 0
    while position < len(header):
        found = _ETAG.match(header, position)
        if found is None or found.end() == position:
            return False
        if found[2] == etag and (weak or not found[1]):
            return True
        position = found.end()
    return False


def _date(value: str | None) -> int | None:
    """An HTTP date as epoch seconds, None if absent or not a date."""
    if not value or len(value) > _MAX_DATE:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone ("-0000") is taken as such
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return int(parsed.timestamp())
    except (OverflowError, ValueError, OSError):
        return None

"""Checksum headers shared by the service and its clients.

``Digest: adler32=<8 hex>`` is RFC 3230's form, the one dCache and XRootD's
HTTP gateway send and gfal and davix read. xxh3-64 has no registered digest
name, so it travels in a header of its own.
"""

from __future__ import annotations

import re

XXH3_HEADER = "X-Checksum-XXH3"
_ADLER32 = re.compile(r"[0-9a-f]{1,8}")
DIGEST_HEADER = "Digest"


def format_digest(adler32: str) -> str:
    return f"adler32={adler32}"


def parse_digest(header: str | None) -> dict[str, str]:
    """The algorithms and values of a ``Digest`` header, names lowercased."""
    found: dict[str, str] = {}
    for item in (header or "").split(","):
        name, sep, value = item.strip().partition("=")
        if sep and name and value:
            found[name.strip().lower()] = value.strip()
    return found


def canonical_adler32(value: str) -> str | None:
    """The form grid catalogues compare ADLER32 in: 8 lowercase hex digits (None if not ADLER32-shaped).

    Catalogues and storage systems disagree about case and leading zeros;
    every comparison goes through this form.
    """
    value = value.strip().lower()
    return value.zfill(8) if _ADLER32.fullmatch(value) else None

"""What clients learn about a cached file: enough to check what they receive."""

from __future__ import annotations

from typing import Any

from seproxy.cache import Entry


def describe(entry: Entry) -> dict[str, Any]:
    """Size and checksums in the keys of DIRAC's answers (``Checksum`` is ADLER32 when known), and
    ``Stale`` (why) when the copy could not be revalidated against its source, which was unreachable."""
    described: dict[str, Any] = {"Size": entry.size, "Checksum": entry.adler32 or "", "ChecksumType": "ADLER32", "xxh3": entry.xxh3}
    if entry.unverified:
        described["Stale"] = f"served from the cache without revalidation: {entry.unverified}"
    return described

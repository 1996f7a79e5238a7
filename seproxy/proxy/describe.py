"""What clients learn about a cached file: enough to check what they receive."""

from __future__ import annotations

from typing import Any

from seproxy.cache import Entry, Growing


def describe(entry: Entry | Growing) -> dict[str, Any]:
    """Size and checksums in the keys of DIRAC's answers (``Checksum`` is ADLER32 when known), and
    ``Stale`` (why) when the copy could not be revalidated against its source, which was unreachable.

    A file still being staged has what its source announced (``Size`` None when it told none),
    no xxh3 yet, and ``Staging`` True.
    """
    xxh3 = "" if isinstance(entry, Growing) else entry.xxh3
    described: dict[str, Any] = {"Size": entry.size, "Checksum": entry.adler32 or "", "ChecksumType": "ADLER32", "xxh3": xxh3}
    if isinstance(entry, Growing):
        described["Staging"] = True
    elif entry.unverified:
        described["Stale"] = f"served from the cache without revalidation: {entry.unverified}"
    return described

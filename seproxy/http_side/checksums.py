"""The headers that let a client check a cached file it downloads: xxh3, ETag and, when known, ADLER32.

Shared by every route that serves cache files (the side server, the RPC
``streamToClient``), so that a client reads them the same way everywhere.
"""

from __future__ import annotations

from seproxy.cache import Entry
from seproxy.transfer.checksum_headers import DIGEST_HEADER, XXH3_HEADER, format_digest


def checksum_headers(entry: Entry) -> dict[str, str]:
    headers = {XXH3_HEADER: entry.xxh3, "ETag": f'"{entry.xxh3}"'}
    if entry.adler32:
        headers[DIGEST_HEADER] = format_digest(entry.adler32)
    return headers

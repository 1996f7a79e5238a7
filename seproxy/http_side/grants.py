"""What a download URL serves, carried inside its key: so that an instance without its link can serve it.

A grant names the logical files of a URL and the user (and group) it was
made for. It travels in the key as base64url (no padding) of raw-deflated
compact JSON, and the key's signature covers it, so it cannot be changed
or forged without the secret; it is read only once the signature checks
out, and inflated with a bound, so an unauthenticated request costs no
more than its own length.

The names a URL serves its files under follow from its LFNs alone (and the
link id), the same wherever the URL is served: one LFN is served as its
base name, several as one tar archive whose members are the LFNs without
their leading ``/`` (as ``tar`` itself stores absolute paths).
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import zlib
from dataclasses import dataclass

# Longest encoded grant put in a URL (characters): with it, a request line stays under the
# side server's (and HAProxy's default) limits. A longer one is left out of the URL, which
# then only the instance holding its link serves.
MAX_ENCODED = 6000
# Most bytes a grant inflates to: far more than MAX_ENCODED characters of LFNs compress from.
_MAX_INFLATED = 4 * 1024 * 1024


class BadGrant(ValueError):
    """A signed grant that does not read as one (written by another version, or a bug)."""


@dataclass(frozen=True)
class Grant:
    """The files a URL serves and whose rights apply when an instance stages them on demand."""

    user: str
    group: str
    lfns: tuple[str, ...]
    single_use: bool

    def encode(self) -> str:
        text = json.dumps([self.user, self.group, int(self.single_use), list(self.lfns)], separators=(",", ":"))
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = deflate.compress(text.encode("utf-8", "surrogateescape")) + deflate.flush()
        return base64.urlsafe_b64encode(packed).rstrip(b"=").decode()

    @classmethod
    def decode(cls, encoded: str) -> Grant:
        try:
            fields = json.loads(_inflate(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))))
        except (binascii.Error, zlib.error, ValueError):  # JSON and UTF-8 errors are ValueErrors
            raise BadGrant("the file list of this link cannot be read") from None
        if not (isinstance(fields, list) and len(fields) == 4):
            raise BadGrant("the file list of this link is not shaped as one")
        user, group, single_use, lfns = fields
        texts = [user, group, *lfns] if isinstance(lfns, list) and lfns else []
        if not texts or not all(isinstance(text, str) for text in texts) or single_use not in (0, 1):
            raise BadGrant("the file list of this link is not shaped as one")
        return cls(user, group, tuple(lfns), bool(single_use))


def _inflate(packed: bytes) -> str:
    inflate = zlib.decompressobj(-15)
    text = inflate.decompress(packed, _MAX_INFLATED)
    if inflate.unconsumed_tail or not inflate.eof:
        raise ValueError("over the bound, or cut short")
    return text.decode("utf-8", "surrogateescape")

def served_names(link_id: str, lfns: tuple[str, ...] | list[str]) -> tuple[str, list[str]]:
    """(the URL's file name, the name of each LFN in what it serves)."""
    if len(lfns) == 1:
        name = posixpath.basename(lfns[0])
        return name, [name]
    return f"seproxy-{link_id[:12]}.tar", [lfn.lstrip("/") for lfn in lfns]

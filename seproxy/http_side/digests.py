"""Whole-file checksums as HTTP headers: ``Want-Digest``/``Digest`` (RFC 3230) and
``Want-Repr-Digest``/``Repr-Digest`` (RFC 9530).

Grid clients ask checksums this way: davix, and through it ``gfal-sum`` and
``gfal-copy -K``, send ``Want-Digest: ADLER32`` (the name as the user typed
it) and read ``Digest: adler32=<hex>``, splitting the answer on commas
without trimming blanks; xrdcp's HTTP plugin asks MD5 and SHA-256. So the
answer names each algorithm the client asked for and we know, in the
client's order, comma separated without blanks: ADLER32 as 8 lowercase hex
digits, MD5 and SHA-256 base64-encoded as RFC 3230's registry says. RFC
9530 replaces RFC 3230 with structured fields (``sha-256=:<base64>:``); its
active algorithm is SHA-256, MD5 and ADLER32 (``adler``) are deprecated but
still answered when asked for by name.

A header we cannot read, or algorithms we do not know, get no digest rather
than an error: the file is still served, and the client reports what is
missing. Values are hex strings here, the form the cache index keeps.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path

from seproxy.transfer.checksum_headers import DIGEST_HEADER

WANT_DIGEST = "want-digest"
WANT_REPR_DIGEST = "want-repr-digest"
REPR_DIGEST_HEADER = "Repr-Digest"

# Our algorithm names: "adler32" is computed while a file is written; the others on demand.
ALGORITHMS = ("adler32", "md5", "sha256")
# Names in Want-Digest (RFC 3230 registry, case-insensitive) and Want-Repr-Digest (RFC 9530).
_RFC3230_NAMES = {"adler32": "adler32", "md5": "md5", "sha-256": "sha256"}
_RFC9530_NAMES = {"adler": "adler32", "md5": "md5", "sha-256": "sha256"}
_ANSWER_NAMES = {
    DIGEST_HEADER: {value: name for name, value in _RFC3230_NAMES.items()},
    REPR_DIGEST_HEADER: {value: name for name, value in _RFC9530_NAMES.items()},
}
# Items read from one header: more is not a client, and would only cost time.
_MAX_ITEMS = 16
_HASHES = {"md5": hashlib.md5, "sha256": hashlib.sha256}
_BLOCK = 1 << 20

# Gives the hex value of an algorithm for the file being answered (computing it if need be).
DigestOf = Callable[[str], str]


def wanted(header: str | None, names: dict[str, str]) -> list[str]:
    """The algorithms (our names) a ``Want-*`` header asks for, in its order, without repeats.

    Items are ``name``, ``name;q=0.5`` (RFC 3230) or ``name=5`` (RFC 9530);
    a weight of zero means "not this one".
    """
    found: list[str] = []
    if not header:
        return found
    for item in header.split(",", _MAX_ITEMS)[:_MAX_ITEMS]:
        name, _, weight = item.partition(";") if ";" in item else item.partition("=")
        algorithm = names.get(name.strip(" \t").lower())
        if algorithm and algorithm not in found and not _refused(weight):
            found.append(algorithm)
    return found


def _refused(weight: str) -> bool:
    """Whether a weight (``q=0``, ``0``, ``q=0.000``) says the algorithm is not acceptable."""
    value = weight.strip(" \t").removeprefix("q=").removeprefix("Q=")
    try:
        return float(value) == 0 if value else False
    except ValueError:
        return False


def digest_headers(
    headers: dict[str, str], digest_of: DigestOf, *, default: tuple[str, ...] = (), known: tuple[str, ...] = ALGORITHMS
) -> dict[str, str]:
    """``Digest`` and ``Repr-Digest`` answering the request's ``headers`` (names lowercased).

    ``default``: what ``Digest`` names when the client asks nothing (seproxy's
    own client reads ADLER32 from every answer). ``known``: the algorithms
    ``digest_of`` can give (a file still being staged has only what its
    source announced).
    """
    answer = {}
    asked = wanted(headers.get(WANT_DIGEST), _RFC3230_NAMES) if WANT_DIGEST in headers else list(default)
    asked = [algorithm for algorithm in asked if algorithm in known]
    if asked:
        answer[DIGEST_HEADER] = ",".join(f"{_ANSWER_NAMES[DIGEST_HEADER][a]}={_rfc3230(a, digest_of(a))}" for a in asked)
    repr_asked = [algorithm for algorithm in wanted(headers.get(WANT_REPR_DIGEST), _RFC9530_NAMES) if algorithm in known]
    if repr_asked:
        answer[REPR_DIGEST_HEADER] = ", ".join(
            f"{_ANSWER_NAMES[REPR_DIGEST_HEADER][a]}=:{_base64(digest_of(a))}:" for a in repr_asked
        )
    return answer


def checksum_values(digest_of: DigestOf, algorithms: tuple[str, ...] = ("adler32", "md5")) -> str:
    """``adler32=<hex>,md5=<base64>``: the list dCache gives in its WebDAV ``Checksums`` property."""
    return ",".join(f"{_ANSWER_NAMES[DIGEST_HEADER][a]}={_rfc3230(a, digest_of(a))}" for a in algorithms)


def _rfc3230(algorithm: str, value: str) -> str:
    return value if algorithm == "adler32" else _base64(value)


def _base64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def file_digest(path: Path, algorithm: str) -> str:
    """The hex checksum of a whole file, in one read (hashlib and zlib release the GIL on large blocks)."""
    with open(path, "rb") as stream:
        if algorithm != "adler32":
            return hashlib.file_digest(stream, _HASHES[algorithm]).hexdigest()
        checksum = 1
        while block := stream.read(_BLOCK):
            checksum = zlib.adler32(block, checksum)
        return f"{checksum:08x}"

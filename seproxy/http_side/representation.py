"""The answer to ``GET``/``HEAD`` of one representation, whatever server sends it.

Given the request's method and headers and what is known of the file
(size, validators, checksums), ``plan`` decides status and headers:
preconditions first (304, 412), then ``Range`` (206 with one range or a
multipart of several, 416), else 200; ``framed`` then lays out the body
pieces. Nothing here knows sockets or Tornado, so the side server and a
WebDAV door can share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from seproxy.byte_range import ByteRange, RangeNotSatisfiable, parse_ranges
from seproxy.http_side.body import Piece, body_length, select
from seproxy.http_side.conditional import Validators, precondition, range_applies
from seproxy.http_side.digests import ALGORITHMS, WANT_DIGEST, WANT_REPR_DIGEST, DigestOf, digest_headers
from seproxy.http_side.multipart import byteranges

OCTET_STREAM = "application/octet-stream"
# The request headers ``plan`` reads: a request with none of them gets the same plan every time.
ASKED_BY = frozenset(
    ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "range", WANT_DIGEST, WANT_REPR_DIGEST)
)


@dataclass(frozen=True)
class Representation:
    """One file as served: its size, validators, and its checksums where known (``None``: none)."""

    size: int
    validators: Validators
    digest_of: DigestOf | None = None
    content_type: str = OCTET_STREAM
    # What ``digest_of`` can tell (a file still being staged: only what its source announced).
    algorithms: tuple[str, ...] = ALGORITHMS


@dataclass
class Plan:
    """What to answer: ``ranges`` for a 206, ``message`` for a refusal (412, 416)."""

    status: int
    headers: dict[str, str]
    ranges: list[ByteRange] = field(default_factory=list)
    message: str = ""


def plan(method: str, headers: dict[str, str], representation: Representation) -> Plan:
    """Status and headers for ``method`` (GET or HEAD) with the request's ``headers`` (names lowercased)."""
    validators = representation.validators
    answer = validators.headers()
    condition = precondition(method, headers, validators)
    if condition == 304:
        return Plan(304, answer)
    if condition == 412:
        return Plan(412, {}, message="the file does not meet the request's precondition")
    if representation.digest_of is not None:
        answer.update(digest_headers(headers, representation.digest_of, default=("adler32",), known=representation.algorithms))
    answer["Accept-Ranges"] = "bytes"
    size = representation.size
    try:
        ranges = parse_ranges(headers.get("range"), size) if range_applies(headers, validators) else None
    except RangeNotSatisfiable as exc:
        return Plan(416, {"Content-Range": f"bytes */{size}"}, message=str(exc))
    if ranges is None:
        return Plan(200, {**answer, "Content-Type": representation.content_type, "Content-Length": str(size)})
    return Plan(206, answer, ranges)


def framed(chosen: Plan, body: Sequence[Piece], representation: Representation) -> list[Piece]:
    """The body pieces of a 200 or 206 ``chosen`` plan (completing its headers for a 206)."""
    if chosen.status != 206:
        return list(body)
    size, content_type = representation.size, representation.content_type
    if len(chosen.ranges) == 1:
        (wanted,) = chosen.ranges
        pieces = select(body, wanted.start, wanted.length)
        chosen.headers.update({"Content-Type": content_type, "Content-Range": wanted.content_range(size)})
    else:
        multipart_type, pieces = byteranges(body, chosen.ranges, size, content_type)
        chosen.headers["Content-Type"] = multipart_type
    chosen.headers["Content-Length"] = str(body_length(pieces))
    return pieces

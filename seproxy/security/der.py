"""Just enough DER to read and write the few structures ``cryptography`` leaves opaque.

Grid certificates carry extensions that ``cryptography`` hands over as raw
bytes (RFC 3820 ProxyCertInfo, the DIRAC group), and OpenSSL's subject hash
is defined on a re-encoding of the raw name. pyasn1 would be a whole ASN.1
compiler for three tiny shapes, so this module reads and writes
tag-length-value triples with single-byte tags and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator

INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
T61_STRING = 0x14
IA5_STRING = 0x16
VISIBLE_STRING = 0x1A
UNIVERSAL_STRING = 0x1C
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31


def read(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """One TLV at ``offset``: its tag, its content and the offset just after it."""
    if offset + 2 > len(data):
        raise ValueError("DER: truncated")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("DER: multi-byte tags are not supported")
    if length & 0x80:
        size = length & 0x7F
        # 0x80 is BER's indefinite length, which DER forbids.
        if size == 0 or size > 4 or offset + size > len(data):
            raise ValueError("DER: bad length")
        length = int.from_bytes(data[offset : offset + size], "big")
        offset += size
    end = offset + length
    if end > len(data):
        raise ValueError("DER: truncated")
    return tag, data[offset:end], end


def read_one(data: bytes, expected_tag: int) -> bytes:
    """The content of ``data``, which must be exactly one TLV with ``expected_tag``."""
    tag, content, end = read(data)
    if tag != expected_tag or end != len(data):
        raise ValueError(f"DER: expected one value with tag 0x{expected_tag:02x}")
    return content


def children(content: bytes) -> Iterator[tuple[int, bytes]]:
    """The (tag, content) pairs inside a constructed value's content."""
    offset = 0
    while offset < len(content):
        tag, inner, offset = read(content, offset)
        yield tag, inner


def encode(tag: int, content: bytes) -> bytes:
    """One TLV, with the shortest length form as DER requires."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def encode_oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER TLV for ``"1.2.840..."``."""
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2:
        raise ValueError(f"DER: {dotted!r} is not an object identifier")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        # Base 128, most significant group first, high bit on all but the last.
        groups = [arc & 0x7F]
        arc >>= 7
        while arc:
            groups.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(groups))
    return encode(OID, bytes(body))

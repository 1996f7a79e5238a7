"""How a harness reads its input: newline-separated text fields, so that seeds stay readable.

Bytes that are not UTF-8 become lone surrogates (``surrogateescape``), the
same way the side server turns an undecodable URL into a file name, so the
fuzzer can still reach every byte value.
"""

from __future__ import annotations


def fields(data: bytes, count: int) -> list[str]:
    """The first ``count`` - 1 lines of ``data`` and the rest, padded with empty fields."""
    parts = data.decode("utf-8", "surrogateescape").split("\n", count - 1)
    return parts + [""] * (count - len(parts))


def number(text: str, limit: int) -> int | None:
    """``text`` as a non-negative integer below ``limit``, or None when it is not one."""
    if text.isascii() and text.isdigit() and int(text) < limit:
        return int(text)
    return None


def raw(text: str) -> bytes:
    """The bytes a field was read from."""
    return text.encode("utf-8", "surrogateescape")

"""File ids: how clients name their files in the cache, ``getFile/<name>`` and ``putFile/<name>``.

A file id never becomes a path: it is looked up in the cache index under the
caller's user name, so ``../``, absolute paths or NUL bytes cannot reach the
file system. They are still refused with a clear message.
"""

from __future__ import annotations

import errno
import re

from seproxy.transfer import SErrorException
from seproxy.transfer.transfer_client import GET_AREA, PUT_AREA

__all__ = ["GET_AREA", "PUT_AREA", "file_id", "parse_file_id"]

# No separator, no C0/C1 control character, no lone surrogate (JSON can carry one; UTF-8 cannot).
_NAME = re.compile(r"[^/\\\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,255}")


def parse_file_id(file_id: str, area: str) -> str:
    """The name inside ``area`` that ``file_id`` designates; ``SErrorException(EINVAL)`` if malformed."""
    prefix, slash, name = file_id.partition("/")
    if prefix != area or not slash or not _NAME.fullmatch(name) or name in (".", ".."):
        raise SErrorException(
            f"file id {file_id[:120]!r} is not {area}/<name> (a file name: no '/', no control characters, "
            "at most 255 characters)",
            errno=errno.EINVAL,
        )
    return name


def file_id(area: str, name: str) -> str:
    return f"{area}/{name}"

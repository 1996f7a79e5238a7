"""The JSON codec of DIRAC's HTTPS protocol.

Plain JSON plus three tagged objects: ``{"__dCls": "dt", "obj": "YYYY-mm-dd
HH:MM:SS"}`` for a datetime, ``"date"`` for a date and ``"b64"`` for bytes.
Tuples travel as arrays. DIRAC itself would import any class a peer names in
``__dCls``; this codec refuses every tag it does not know, so that the wire
can never choose what code runs. ``encode`` refuses a dict of the caller's
own with the key ``__dCls``, which the peer would read as a tagged value.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
import math
import threading
from typing import Any

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"
TAG = "__dCls"
_QUOTED_TAG = f'"{TAG}"'
# Nesting limit for both directions: DIRAC payloads nest a few levels; without a limit of
# its own the codec would accept or refuse by how deep the caller's Python stack already is.
MAX_DEPTH = 100
_TOO_DEEP = f"JSON nested too deeply (more than {MAX_DEPTH} levels)"


class CodecError(ValueError):
    """The text is not valid seproxy/DIRAC JSON; the message says why."""


class _Encoder(json.JSONEncoder):
    """Kept per thread (``_encoder``) and reused: ``tagged`` counts the tagged values one ``encode`` wrote.

    No circular check: a value that contains itself nests without end, and is refused as nested
    too deeply (the check cost a dictionary insert per list and dict of every answer).
    """

    def __init__(self) -> None:
        super().__init__(allow_nan=False, separators=(",", ":"), check_circular=False)
        self.tagged = 0

    def default(self, obj: Any) -> Any:
        if isinstance(obj, datetime.datetime):
            tagged = {"__dCls": "dt", "obj": _datetime_text(obj)}
        elif isinstance(obj, (set, frozenset)):
            return sorted(obj)
        elif isinstance(obj, datetime.date):
            tagged = {"__dCls": "date", "obj": obj.isoformat()}
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            tagged = {"__dCls": "b64", "obj": base64.b64encode(bytes(obj)).decode("ascii")}
        else:
            raise TypeError(f"cannot encode a {type(obj).__name__} as DIRAC JSON")
        self.tagged += 1
        return tagged


@functools.lru_cache(maxsize=64)
def _datetime_text(moment: datetime.datetime) -> str:
    """A datetime as DIRAC writes it, naive UTC to the second; answers carry the same few (now, a
    service's start) again and again."""
    if moment.tzinfo is not None:  # DIRAC's datetimes are naive UTC
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment.isoformat(sep=" ", timespec="seconds")


_PER_THREAD = threading.local()


def _encoder() -> _Encoder:
    """This thread's encoder (answers are encoded on the event loop and in the pool's threads)."""
    encoder: _Encoder | None = getattr(_PER_THREAD, "encoder", None)
    if encoder is None:
        encoder = _PER_THREAD.encoder = _Encoder()
    encoder.tagged = 0
    return encoder


def _has_tag_key(data: Any) -> bool:
    """Whether a plain dict in ``data`` has the key ``__dCls``."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if TAG in item:
                return True
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return False


def _too_deep(data: Any, text: str) -> bool:
    """Whether ``data`` (serialised as ``text``) nests lists and dicts more than ``MAX_DEPTH`` levels.

    Walked only when ``text`` has that many brackets at all, so that a flat
    payload costs two counts.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    pending = [(data, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list, tuple, set, frozenset)):
            if depth > MAX_DEPTH:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def encode(data: Any) -> str:
    """Serialise ``data``; raises ``CodecError`` for what the wire cannot carry faithfully."""
    encoder = _encoder()
    try:
        text = encoder.encode(data)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an aware datetime beyond year 1..9999 in UTC
        raise CodecError(str(exc)) from None
    except RecursionError:
        raise CodecError(_TOO_DEEP) from None
    # A caller's dict with the key __dCls would come back as bytes or a date, or be refused: look for
    # one only when the text shows the key more often than the tagged values the encoder wrote put it
    # there (each puts it once; a string "__dCls" counts too, so more is a reason to look, not a proof).
    if text.count(_QUOTED_TAG) > encoder.tagged and _has_tag_key(data):
        raise CodecError(f"a dict key {TAG!r} is reserved for tagged values and cannot be sent")
    if _too_deep(data, text):
        raise CodecError(_TOO_DEEP)
    return text


def _decode_tagged(obj: dict[str, Any]) -> Any:
    if TAG not in obj:
        return obj
    tag = obj[TAG]
    if tag not in ("dt", "date", "b64"):
        raise CodecError(f"unknown __dCls {str(tag)[:64]!r}: only dt, date and b64 are accepted")
    value = obj.get("obj")
    if set(obj) != {TAG, "obj"} or not isinstance(value, str):
        raise CodecError(f"tagged object {tag!r} must have exactly the keys __dCls and obj (a string)")
    try:
        if tag == "dt":
            return datetime.datetime.strptime(value, DATETIME_FORMAT)
        if tag == "date":
            return datetime.datetime.strptime(value, DATE_FORMAT).date()
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise CodecError(f"bad value for __dCls {tag!r}: {value[:64]!r}") from None


def _refuse_constant(name: str) -> None:
    raise CodecError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    # json reads 1e400 as inf, which encode() then refuses: refuse it here, where it came from.
    value = float(text)
    if not math.isfinite(value):
        raise CodecError(f"number {text[:32]} is out of range")
    return value


_DECODER = json.JSONDecoder(object_hook=_decode_tagged, parse_float=_finite_float, parse_constant=_refuse_constant)


def decode(text: str | bytes) -> Any:
    """Parse DIRAC JSON; any malformation raises ``CodecError``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        value = _DECODER.decode(text)
    except CodecError:
        raise
    except UnicodeDecodeError:
        raise CodecError("not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise CodecError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits()
        raise CodecError(f"invalid JSON number: {exc}") from None
    except RecursionError:
        raise CodecError(_TOO_DEEP) from None
    if _too_deep(value, text):
        raise CodecError(_TOO_DEEP)
    return value

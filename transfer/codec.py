"""The JSON codec of DIRAC's HTTPS protocol.

Plain JSON plus three tagged objects: ``{"__dCls": "dt", "obj": "YYYY-mm-dd
HH:MM:SS"}`` for a datetime, ``"date"`` for a date and ``"b64"`` for bytes.
Tuples travel as arrays. DIRAC itself would import any class a peer names in
``__dCls``; this codec refuses every tag it does not know, so that the wire
can never choose what code runs.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from typing import Any

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"


class CodecError(ValueError):
    """The text is not valid seproxy/DIRAC JSON; the message says why."""


class _Encoder(json.JSONEncoder):
    def default(self, obj: Any) -> Any:
        if isinstance(obj, datetime.datetime):
            if obj.tzinfo is not None:  # DIRAC's datetimes are naive UTC
                obj = obj.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return {"__dCls": "dt", "obj": obj.isoformat(sep=" ", timespec="seconds")}
        if isinstance(obj, datetime.date):
            return {"__dCls": "date", "obj": obj.isoformat()}
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return {"__dCls": "b64", "obj": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        raise TypeError(f"cannot encode a {type(obj).__name__} as DIRAC JSON")


_ENCODER = _Encoder(allow_nan=False, separators=(",", ":"))


def encode(data: Any) -> str:
    """Serialise ``data``; raises ``CodecError`` for a type JSON cannot carry."""
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise CodecError(str(exc)) from None


def _decode_tagged(obj: dict[str, Any]) -> Any:
    tag = obj.get("__dCls")
    if tag is None:
        return obj
    if tag not in ("dt", "date", "b64"):
        raise CodecError(f"unknown __dCls {str(tag)[:64]!r}: only dt, date and b64 are accepted")
    value = obj.get("obj")
    if set(obj) != {"__dCls", "obj"} or not isinstance(value, str):
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


_DECODER = json.JSONDecoder(object_hook=_decode_tagged, parse_constant=_refuse_constant)


def decode(text: str | bytes) -> Any:
    """Parse DIRAC JSON; any malformation raises ``CodecError``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        return _DECODER.decode(text)
    except CodecError:
        raise
    except UnicodeDecodeError:
        raise CodecError("not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise CodecError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise CodecError("JSON nested too deeply") from None

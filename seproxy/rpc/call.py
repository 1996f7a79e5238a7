"""One RPC call as DIRAC's HTTPS clients send it: a form-encoded POST body.

Fields: ``method``, ``args`` (a JSON array), ``clientVO``, ``clientSetup``,
optional ``extraCredentials`` (JSON) and ``rawContent``. Everything is
checked here, before any handler code runs, so that a malformed request is
answered with a 400 that names the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from seproxy.rpc.form import FormError, FormReader
from seproxy.transfer import codec

METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")  # used with fullmatch: "$" lets "ping\n" through
FORM_TYPE = "application/x-www-form-urlencoded"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", "none", ""}
# The fields of a call; any other is ignored (and not kept), as DIRAC does.
CALL_FIELDS = ("method", "args", "clientVO", "clientSetup", "extraCredentials", "rawContent")
# Lists and dicts one JSON field may hold. Decoding millions of tiny lists takes seconds of CPU with the
# interpreter lock held, in whatever thread: DIRAC's calls carry lists of paths, never such multitudes.
MAX_CONTAINERS = 50_000


class BadRequest(ValueError):
    """The request is malformed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RPCCall(NamedTuple):
    """A call as its form gave it (a named tuple: one is made per request, and a frozen dataclass
    costs twice as much to make)."""

    method: str
    args: list[Any]
    client_vo: str = "unknown"
    client_setup: str = "None"
    extra_credentials: Any = None
    raw_content: bool = False


def is_form_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE


def check_form_type(content_type: str) -> None:
    """A call is a form; anything else is a 415, before its body is read."""
    if not is_form_type(content_type):
        raise BadRequest(f"Content-Type must be {FORM_TYPE}, got {content_type[:64]!r}", status=415)


def form_reader(
    route: Callable[[str], Callable[[bytes], None] | None] | None = None, routed: Collection[str] = ()
) -> FormReader:
    """A reader that keeps the fields of a call (``route`` may take one of those named in ``routed`` as it arrives)."""
    return FormReader(CALL_FIELDS, route, routed) if route is not None else FormReader(CALL_FIELDS)


def read_fields(reader: FormReader) -> dict[str, str]:
    """The fields ``reader`` kept, once the body is in; ``BadRequest`` naming what is wrong."""
    try:
        return reader.finish()
    except FormError as exc:
        raise BadRequest(str(exc)) from None


def _flag(fields: dict[str, str], name: str) -> bool:
    value = fields.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"form field {name!r} must be True or False, got {fields[name][:32]!r}")


def _json_field(fields: dict[str, str], name: str) -> Any:
    text = fields[name]
    if text.count("[") + text.count("{") > MAX_CONTAINERS:
        raise BadRequest(f"form field {name!r} holds more than {MAX_CONTAINERS} JSON lists and dicts")
    try:
        value = codec.decode(text)
    except codec.CodecError as exc:
        raise BadRequest(f"form field {name!r}: {exc}") from None
    bad = _invalid_text(value)
    if bad is not None:
        raise BadRequest(f"form field {name!r}: the string {bad[:64]!r} is not valid Unicode (a lone surrogate)")
    return value


def _invalid_text(value: Any) -> str | None:
    """The first string in ``value`` that UTF-8 cannot encode, if any.

    JSON's ``\\ud800`` escapes can smuggle lone surrogates into a string;
    no file system call, database or log line could encode it later, so it
    is refused here, where the message can still name the field.
    """
    pending = [value]
    while pending:  # a loop, not recursion: the JSON may be nested as deep as the decoder allows
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def parse_call(content_type: str, body: bytes) -> RPCCall:
    """Check and decode a whole DIRAC RPC form body (the server reads its bodies with ``form_reader``)."""
    check_form_type(content_type)
    reader = form_reader()
    try:
        reader.feed(body, last=True)
    except FormError as exc:
        raise BadRequest(str(exc)) from None
    return call_of(read_fields(reader))


def call_of(fields: dict[str, str]) -> RPCCall:
    """The call a form's fields make, checked and decoded.

    Fields this version does not know are ignored, as DIRAC does, so that a
    newer client that sends one more field still works.
    """
    method = fields.get("method")
    if not method:
        raise BadRequest("form field 'method' is missing")
    if not METHOD_NAME.fullmatch(method):
        raise BadRequest(f"form field 'method': {method[:64]!r} is not a method name")
    args = _json_field(fields, "args") if "args" in fields else []
    if not isinstance(args, list):
        raise BadRequest("form field 'args' must be a JSON array")
    extra = _json_field(fields, "extraCredentials") if fields.get("extraCredentials") else None
    return RPCCall(
        method=method,
        args=args,
        client_vo=fields.get("clientVO", "unknown"),
        client_setup=fields.get("clientSetup", "None"),
        extra_credentials=extra,
        raw_content=_flag(fields, "rawContent"),
    )

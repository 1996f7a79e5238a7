"""An ``application/x-www-form-urlencoded`` body read as it arrives, in memory bounded by the body.

``urllib.parse.parse_qsl`` wants the whole body as one string and splits it
at every ``%``: fourteen MiB of ``%20`` became millions of small objects,
over a GiB of memory, before the caller was even known. Here each chunk is
decoded as it comes (at most a few bytes of an escape are carried to the
next one), only the fields a call is made of are kept, and a field may hand
its value to a sink instead of keeping it (``FormReader.route``), so that a
file sent inside a form never has to be held. What is kept is at most the
body's size; a chunk's work is bounded by the chunk.

The rules are ``parse_qsl``'s strict ones: pairs separated by ``&``, each
with an ``=``; ``+`` is a space; an escape that is not ``%`` and two hex
digits stays as it is; names and values must be UTF-8 once decoded.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Collection
from urllib.parse import unquote_to_bytes


class FormError(ValueError):
    """The body is not a form this service takes; the message says why."""


# Looked up once: a codec lookup per request costs more than checking a small body.
_UTF8 = codecs.getincrementaldecoder("utf-8")


def _route_nothing(name: str) -> None:
    return None


def _decoded(raw: bytes) -> bytes:
    """``raw`` with ``+`` as a space and its %-escapes decoded (most names and values have neither)."""
    return unquote_to_bytes(raw.replace(b"+", b" ")) if b"%" in raw or b"+" in raw else raw


class FormReader:
    """Feed it the body chunk by chunk, then ``finish()``: the kept fields as text.

    ``kept`` names the fields to keep (any other is checked and dropped);
    ``route(name)``, asked when a kept field's value begins, may return a
    callable that gets the value's decoded bytes instead of the reader.
    """

    def __init__(self, kept: Collection[str], route: Callable[[str], Callable[[bytes], None] | None]) -> None:
        self._kept = {name.encode() for name in kept}
        self._route = route
        self._utf8 = _UTF8("strict")
        self._carry = b""
        self._started = False
        self._name = bytearray()
        # The value of the pair being read: None while its name is read.
        self._value: bytearray | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._keeping = False
        self._fields: dict[str, bytearray | None] = {}
        # Bytes of the body fed, and those of them that went to a sink.
        self._fed = 0
        self._routed = 0

    @property
    def kept(self) -> int:
        """Bytes of the body read so far that did not go to a sink."""
        return self._fed - self._routed

    def field(self, name: str) -> str | None:
        """A kept field read to its end, as text (None: not read yet, routed, or not UTF-8)."""
        value = self._fields.get(name)
        try:
            return None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def feed(self, chunk: bytes) -> None:
        try:
            self._utf8.decode(chunk)  # only checked: the raw body must be UTF-8 too
        except UnicodeDecodeError:
            raise FormError("the request body is not valid UTF-8") from None
        self._started = self._started or bool(chunk)
        self._fed += len(chunk)
        data = self._carry + chunk
        # An escape cut by the chunk's end waits for its hex digits.
        hold = 2 if data[-2:-1] == b"%" else 1 if data[-1:] == b"%" else 0
        data, self._carry = (data[:-hold], data[-hold:]) if hold else (data, b"")
        # Split at the pairs, then a name at its first "=": one step per field rather than per separator.
        for index, pair in enumerate(data.split(b"&")):
            if index:
                self._end_pair()
            if self._value is None:
                name, equals, pair = pair.partition(b"=")
                self._name += _decoded(name)
                if not equals:
                    continue
                self._begin_value()
            # In a value, an "=" is a plain byte (never part of an escape), not counted as a sink's.
            if self._sink is not None:
                if pair:
                    self._routed += len(pair) - pair.count(b"=")
                    self._sink(_decoded(pair))
            elif self._keeping and pair:
                assert self._value is not None  # a value is being read: ``_take``'s case, without its call
                self._value += _decoded(pair)

    def finish(self) -> dict[str, str]:
        """The kept fields (a routed one: empty) once the body is all in."""
        # No field begins any more: let go of ``route`` (a handler's bound method, which would make a
        # reference cycle with the handler holding this reader, freed only by the cyclic collector).
        self._route = _route_nothing
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FormError("the request body is not valid UTF-8") from None
        self._text(self._carry)
        self._carry = b""
        if self._started:
            self._end_pair()
        fields = {}
        for name in list(self._fields):
            value = self._fields.pop(name)  # one field at a time: text beside bytes, never the whole body twice
            try:
                fields[name] = "" if value is None else value.decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(f"not a valid form: field {name!r} is not UTF-8 once its %-escapes are decoded") from None
        return fields

    def _text(self, raw: bytes) -> None:
        if raw:
            if self._sink is not None:
                self._routed += len(raw)
            self._take(_decoded(raw))

    def _take(self, decoded: bytes) -> None:
        if self._value is None:
            self._name += decoded
        elif self._sink is not None:
            self._sink(decoded)
        elif self._keeping:
            self._value += decoded

    def _begin_value(self) -> None:
        name = bytes(self._name)
        self._value = bytearray()
        self._keeping = name in self._kept
        if not self._keeping:
            return
        text = name.decode()
        if text in self._fields:
            raise FormError(f"form field {text!r} is given more than once")
        self._sink = self._route(text)

    def _end_pair(self) -> None:
        if self._value is None:
            shown = bytes(self._name[:32]).decode("utf-8", "replace")
            raise FormError(f"the request body is not a valid form: bad query field: {shown!r}")
        if self._keeping:
            self._fields[bytes(self._name).decode()] = None if self._sink is not None else self._value
        self._name = bytearray()
        self._value = None
        self._sink = None
        self._keeping = False

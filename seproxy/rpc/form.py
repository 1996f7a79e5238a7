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
import functools
import re
from collections.abc import Callable, Collection
from urllib.parse import unquote_to_bytes


class FormError(ValueError):
    """The body is not a form this service takes; the message says why."""


# Looked up once: a codec lookup per request costs more than checking a small body.
_UTF8 = codecs.getincrementaldecoder("utf-8")


_HEX_DIGITS = frozenset(bytes([digit]) for digit in b"0123456789abcdefABCDEF")


def _route_nothing(name: str) -> None:
    return None


@functools.lru_cache(maxsize=16)
def _encoded(names: tuple[str, ...]) -> frozenset[bytes]:
    """Names as the body has them; a reader per request asks for the same ones."""
    return frozenset(name.encode() for name in names)


# Looked for with a pattern: ``b"%" in raw`` first tries b"%" as an integer (``65 in b"A"`` is
# True), raising and clearing a TypeError each time, which cost more than the rest of the check.
_ESCAPED = re.compile(rb"[%+]").search


def _decoded(raw: bytes) -> bytes:
    """``raw`` with ``+`` as a space and its %-escapes decoded (most names and values have neither)."""
    return unquote_to_bytes(raw.replace(b"+", b" ")) if _ESCAPED(raw) else raw


class FormReader:
    """Feed it the body chunk by chunk, then ``finish()``: the kept fields as text.

    ``kept`` names the fields to keep (any other is checked and dropped);
    ``route(name)``, asked when the value of a kept field named in ``routed``
    begins, may return a callable that gets the value's decoded bytes
    instead of the reader (most calls route nothing: asking costs a call per field).
    """

    # One reader per call: slots make it smaller and its attributes quicker to set.
    __slots__ = (
        "_carry", "_fed", "_field_name", "_fields", "_keeping", "_kept", "_name", "_open", "_route",
        "_routed", "_routed_names", "_sink", "_utf8", "_value",
    )  # fmt: skip

    def __init__(
        self,
        kept: tuple[str, ...],
        route: Callable[[str], Callable[[bytes], None] | None] = _route_nothing,
        routed: Collection[str] = (),
    ) -> None:
        self._kept = _encoded(kept)
        self._route = route
        self._routed_names = frozenset(routed)
        # The check that the body is UTF-8, made once a chunk is not ASCII (a form seldom has a byte that is not).
        self._utf8: codecs.IncrementalDecoder | None = None
        self._carry = b""
        self._open = False  # the body's last pair so far has not ended: ``finish`` ends it
        self._name = bytearray()
        # The value of the pair being read: None while its name is read.
        self._value: bytearray | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._keeping = False
        self._field_name = ""  # the kept field being read, as text
        self._fields: dict[str, bytes | bytearray | None] = {}
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

    def feed(self, chunk: bytes, last: bool = False) -> None:
        """The body's next chunk; ``last``: the body ends with it (a body that came whole), so that its
        last pair is read as the others are, not kept waiting for more."""
        if self._utf8 is not None or not chunk.isascii():
            self._utf8 = self._utf8 or _UTF8("strict")
            try:
                self._utf8.decode(chunk)  # only checked: the raw body must be UTF-8 too
            except UnicodeDecodeError:
                raise FormError("the request body is not valid UTF-8") from None
        self._fed += len(chunk)
        data = self._carry + chunk
        # An escape cut by the chunk's end waits for its hex digits (a "%" and one: they may be one yet).
        hold = 0 if last else 2 if data[-2:-1] == b"%" and data[-1:] in _HEX_DIGITS else 1 if data[-1:] == b"%" else 0
        data, self._carry = (data[:-hold], data[-hold:]) if hold else (data, b"")
        # Split at the pairs: every piece but the last ends in this chunk (the last too when the body
        # ends with it); the first may continue a pair begun in an earlier one.
        *ended, rest = data.split(b"&")
        if last and (data or self._open):
            ended.append(rest)
            rest = b""
        self._open = not last and (self._open or bool(chunk))
        if ended and (self._value is not None or self._name):
            self._part(ended.pop(0))
            self._end_pair()
        for pair in ended:
            # A pair that began and ended in this chunk (all of a small form's but the last): taken as it
            # is, without the state a pair cut by a chunk's end needs.
            name, equals, value = pair.partition(b"=")
            name = _decoded(name)
            if not equals:
                raise _bad_field(name)
            if name in self._kept:
                sink = self._begin_field(name)
                if sink is None:
                    self._fields[self._field_name] = _decoded(value)
                else:
                    self._to_sink(sink, value)
                    self._fields[self._field_name] = None
        if rest:
            self._part(rest)

    def _part(self, piece: bytes) -> None:
        """Piece of a pair that a chunk's end cut (split at "&"): of its name, maybe its "=", of its value."""
        if self._value is None:
            name, equals, piece = piece.partition(b"=")
            self._name += _decoded(name)
            if not equals:
                return
            self._begin_value()
        if self._sink is not None:
            self._to_sink(self._sink, piece)
        elif self._keeping and piece:
            assert self._value is not None  # a value is being read: ``_take``'s case, without its call
            self._value += _decoded(piece)

    def _to_sink(self, sink: Callable[[bytes], None], piece: bytes) -> None:
        """Piece of a routed field's value, to its sink. In a value, an "=" is a plain byte (never part
        of an escape), not counted as a sink's."""
        if piece:
            self._routed += len(piece) - piece.count(b"=")
            sink(_decoded(piece))

    def finish(self) -> dict[str, str]:
        """The kept fields (a routed one: empty) once the body is all in."""
        # No field begins any more: let go of ``route`` (a handler's bound method, which would make a
        # reference cycle with the handler holding this reader, freed only by the cyclic collector).
        self._route = _route_nothing
        try:
            if self._utf8 is not None:
                self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FormError("the request body is not valid UTF-8") from None
        self._text(self._carry)
        self._carry = b""
        if self._open:
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
        if self._keeping:
            self._sink = self._begin_field(name)

    def _begin_field(self, name: bytes) -> Callable[[bytes], None] | None:
        """A kept field begins: once only, and routed if ``route`` takes it (the sink then)."""
        text = self._field_name = name.decode()
        if text in self._fields:
            raise FormError(f"form field {text!r} is given more than once")
        return self._route(text) if text in self._routed_names else None

    def _end_pair(self) -> None:
        if self._value is None:
            raise _bad_field(self._name)
        if self._keeping:
            self._fields[self._field_name] = None if self._sink is not None else self._value
        self._name = bytearray()
        self._value = None
        self._sink = None
        self._keeping = False


def _bad_field(name: bytes | bytearray) -> FormError:
    """A pair without "=" (``name`` is what it had)."""
    shown = bytes(name[:32]).decode("utf-8", "replace")
    return FormError(f"the request body is not a valid form: bad query field: {shown!r}")

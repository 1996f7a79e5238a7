"""The promises the fuzzers check, written once for both drivers.

``tests/test_fuzz.py`` (hypothesis, part of the test suite) and the atheris
harnesses of ``python -m fuzz`` (coverage-guided, long runs) feed their
inputs to these functions. Each takes one input, runs the target and raises
``AssertionError`` when the target breaks a promise: an exception other than
the documented refusal, an answer outside its bounds, a round trip that
changes the value. Refused input returns normally, so that any input at all
can be fed to them.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import math
import posixpath
import re
import unicodedata
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from seproxy.byte_range import MAX_RANGES, RangeNotSatisfiable, parse_range, parse_ranges
from seproxy.http_side.grants import MAX_ENCODED, Grant
from seproxy.http_side.request import MAX_BODY, MAX_HEAD, METHODS, head_end, parse_head
from seproxy.http_side.response import Refused
from seproxy.http_side.signing import CLOCK_SKEW, SignedKey, Signer
from seproxy.proxy.file_ids import parse_file_id
from seproxy.rpc.arguments import check_arguments
from seproxy.rpc.call import CALL_FIELDS, FORM_TYPE, METHOD_NAME, BadRequest, parse_call
from seproxy.rpc.form import FormError, FormReader
from seproxy.transfer import SErrorException, codec

# --- the codec ---------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down: in Python 1 == 1.0 == True, on the wire they differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return bool(a == b)


def wire_form(value: Any) -> Any:
    """What ``value`` is after a trip over the wire, by the rules the codec documents."""
    if isinstance(value, (list, tuple)):
        return [wire_form(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [wire_form(item) for item in sorted(value)]
    if isinstance(value, dict):
        return {key: wire_form(item) for key, item in value.items()}
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:  # sent as naive UTC
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return value.replace(microsecond=0)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def check_encode(value: Any) -> bool:
    """``encode`` refuses with ``CodecError`` only, and what it sends decodes to the wire form.

    Returns whether ``value`` was sent, so that a caller can insist on it.
    """
    try:
        text = codec.encode(value)
    except codec.CodecError:
        return False
    try:
        back = codec.decode(text)
    except codec.CodecError as exc:
        raise AssertionError(f"encode sent {text[:80]!r}, which decode refuses: {exc}") from None
    assert _same(back, wire_form(value)), f"{value!r} came back as {back!r}"
    return True


def check_decode(text: str | bytes) -> None:
    """``decode`` refuses with ``CodecError`` only, and whatever it accepts can be sent back as it is."""
    try:
        value = codec.decode(text)
    except codec.CodecError:
        return
    assert check_encode(value), f"decoded {value!r} cannot be encoded again"


# --- the Range parser --------------------------------------------------------

# RFC 9110 §14.1.1 for one range, with the blanks (SP, HTAB) the parser tolerates.
_ONE_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*(?:[0-9]+[ \t]*-[ \t]*[0-9]*|-[ \t]*[0-9]+)[ \t]*", re.I | re.A)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)")


def check_range(header: str, size: int) -> None:
    """Only a header of the form ``bytes=a-b`` gets a range or a 416, and a range lies inside the file."""
    try:
        wanted = parse_range(header, size)
    except RangeNotSatisfiable as exc:
        assert _ONE_RANGE.fullmatch(header), f"416 ({exc}) for {header!r}, which is not one byte range"
        return
    if wanted is None:
        return
    assert _ONE_RANGE.fullmatch(header), f"{header!r} is not one byte range, yet {wanted} was read from it"
    assert 0 <= wanted.start <= wanted.end < size, f"{wanted} is outside a {size}-byte file"
    assert wanted.length == wanted.end - wanted.start + 1 >= 1
    content_range = _CONTENT_RANGE.fullmatch(wanted.content_range(size))
    assert content_range, f"malformed Content-Range {wanted.content_range(size)!r}"
    assert tuple(map(int, content_range.groups())) == (wanted.start, wanted.end, size)


def check_range_list(header: str, size: int) -> None:
    """A range list gives ranges inside the file, ascending, apart (merged), at most ``MAX_RANGES``."""
    try:
        ranges = parse_ranges(header, size)
    except RangeNotSatisfiable:
        assert "bytes" in header.lower(), f"416 for {header!r}, which names no byte range"
        return
    if ranges is None:
        return
    assert 1 <= len(ranges) <= MAX_RANGES, f"{len(ranges)} ranges from {header[:100]!r}"
    for before, after in itertools.pairwise(ranges):
        assert before.end + 1 < after.start, f"{before} and {after} overlap or touch: they should be merged"
    assert all(0 <= r.start <= r.end < size for r in ranges), f"{ranges} outside a {size}-byte file"


def _digits(number: int | None, zeros: int) -> str:
    return "" if number is None else "0" * zeros + str(number)


def check_range_spec(first: int | None, last: int | None, size: int, zeros: int = 0, blank: str = "") -> None:
    """A range built from numbers (with leading zeros and blanks) reads as RFC 9110 §14.1.2 says.

    ``first`` None is a suffix range (the last ``last`` bytes); ``last`` None runs to the end.
    """
    if first is None and last is None:
        return
    header = f"bytes={blank}{_digits(first, zeros)}{blank}-{blank}{_digits(last, zeros)}{blank}"
    if first is None:
        assert last is not None
        expected = (max(0, size - last), size - 1) if last > 0 and size > 0 else None
    elif first >= size or (last is not None and last < first):
        expected = None
    else:
        expected = (first, size - 1 if last is None else min(last, size - 1))
    try:
        wanted = parse_range(header, size)
    except RangeNotSatisfiable:
        assert expected is None, f"416 for {header!r} of a {size}-byte file, expected bytes {expected}"
        return
    assert wanted is not None, f"{header!r} was not read as a range"
    assert (wanted.start, wanted.end) == expected, f"{header!r} of a {size}-byte file read as {wanted}"
    check_range(header, size)


# --- the file-id resolver ------------------------------------------------------


def check_file_id(file_id: str, area: str) -> None:
    """A file id resolves to one plain file name inside ``area``, or is refused with EINVAL.

    The name has no separator, no control character, is neither ``.`` nor
    ``..`` and is valid UTF-8 text; joined to the area it stays inside it.
    """
    try:
        name = parse_file_id(file_id, area)
    except SErrorException as exc:
        assert exc.errno == errno.EINVAL and area in exc.result["Message"], exc.result
        return
    assert f"{area}/{name}" == file_id, f"{file_id!r} resolved to {name!r}: not what was asked for"
    assert 1 <= len(name) <= 255 and name not in (".", ".."), f"{name!r} is not a file name"
    assert "/" not in name and "\\" not in name, f"{name!r} holds a path separator"
    controls = [char for char in name if unicodedata.category(char) in ("Cc", "Cs")]
    assert not controls, f"{name!r} holds control characters or lone surrogates {controls!r}"
    assert posixpath.dirname(posixpath.normpath(f"{area}/{name}")) == area, f"{name!r} leaves {area}"


# --- the URL signer ----------------------------------------------------------


def served_name(path_segment: str) -> str:
    """The name the side server checks for a URL's last segment (see downloads.py)."""
    return unquote(path_segment, errors="surrogateescape")


def check_signed_key(signer: Signer, link_id: str, expires: int, name: str, route: str) -> None:
    """A key the signer made is accepted until ``CLOCK_SKEW`` seconds past its expiry, not a moment later."""
    key = signer.sign(link_id, expires, name, route=route)
    _assert_valid_until_expiry(signer, key, SignedKey(signer.key_id, link_id, expires), name, route)


def check_granted_key(
    signer: Signer, link_id: str, expires: int, name: str, route: str, grant: Grant, position: int, char: str, kind: str
) -> None:
    """A key carrying a grant reads back with that very grant; one character changed anywhere in it is refused."""
    key = signer.sign(link_id, expires, name, route=route, grant=grant)
    carried = grant if len(grant.encode()) <= MAX_ENCODED else None  # a grant too long stays out of the URL
    _assert_valid_until_expiry(signer, key, SignedKey(signer.key_id, link_id, expires, carried), name, route)
    changed = mutate(key, position, char, kind)
    if changed != key:
        _assert_refused(signer, changed, name, expires, route, statuses=(403, 404))


def check_retired_key(
    old_id: str, old_secret: bytes, new_id: str, new_secret: bytes, link_id: str, expires: int, name: str, route: str
) -> None:
    """While a secret is replaced, the keys it signed stay valid until they expire; new keys carry the new id."""
    if old_id == new_id:
        return  # a new secret gets a new key id
    rotated = Signer(new_id, new_secret, retired={old_id: old_secret})
    key = Signer(old_id, old_secret).sign(link_id, expires, name, route=route)
    _assert_valid_until_expiry(rotated, key, SignedKey(old_id, link_id, expires), name, route)
    assert rotated.sign(link_id, expires, name, route=route).startswith(f"{new_id}."), "signed with a retired key"
    if new_secret != old_secret:  # the retired id does not lend itself to another secret
        forged = Signer(old_id, new_secret).sign(link_id, expires, name, route=route)
        _assert_refused(rotated, forged, name, expires, route, statuses=(403,))


def _assert_valid_until_expiry(checker: Signer, key: str, expected: SignedKey, name: str, route: str) -> None:
    last_moment = expected.expires + CLOCK_SKEW
    signed = checker.check(key, name, last_moment, route=route)
    assert signed == expected, f"{key!r} read back as {signed}"
    _assert_refused(checker, key, name, math.nextafter(last_moment, math.inf), route, statuses=(403,))


SIGNED_PARTS = ("key", "expires", "name", "route")
MUTATIONS = ("substitute", "insert", "delete")


def mutate(text: str, position: int, char: str, kind: str) -> str:
    """``text`` with ``char`` inserted, or the character at ``position`` (modulo the length) replaced or deleted."""
    assert kind in MUTATIONS, kind
    if kind == "insert":
        at = position % (len(text) + 1)
        return text[:at] + char + text[at:]
    if not text:
        return text
    at = position % len(text)
    return text[:at] + (char if kind == "substitute" else "") + text[at + 1 :]


def check_mutation_refused(
    signer: Signer, link_id: str, expires: int, name: str, route: str, part: str, position: int, char: str, kind: str
) -> None:
    """Changing one character of the key, its expiry, the name or the route makes a valid link invalid."""
    key = signer.sign(link_id, expires, name, route=route)
    original = {"key": key, "name": name, "route": route}
    given = dict(original)
    if part == "expires":
        key_id, _, stamp, signature = key.split(".")
        given["key"] = ".".join((key_id, link_id, mutate(stamp, position, char, kind), signature))
    else:
        given[part] = mutate(given[part], position, char, kind)
    if given == original:
        return  # the mutation changed nothing
    _assert_refused(signer, given["key"], given["name"], expires, given["route"], statuses=(403, 404))


def check_foreign_key(ours: Signer, theirs: Signer, link_id: str, expires: int, name: str, route: str) -> None:
    """A key made with another secret or another key id is refused (403)."""
    key = theirs.sign(link_id, expires, name, route=route)
    if theirs.key_id == ours.key_id and key == ours.sign(link_id, expires, name, route=route):
        return  # the same secret under the same id: not foreign
    _assert_refused(ours, key, name, expires, route, statuses=(403,))


def check_any_key(signer: Signer, key: str, name: str, route: str, now: float) -> None:
    """Any key string is refused with 403/404, unless it is exactly what the signer would make."""
    try:
        signed = signer.check(key, name, now, route=route)
    except Refused as refused:
        assert refused.status in (403, 404), refused.status
        return
    genuine = signer.sign(signed.link_id, signed.expires, name, route=route, grant=signed.grant)
    assert key == genuine, f"accepted a forged key {key!r}"
    assert now <= signed.expires + CLOCK_SKEW


def _assert_refused(signer: Signer, key: str, name: str, now: float, route: str, statuses: tuple[int, ...]) -> None:
    try:
        signed = signer.check(key, name, now, route=route)
    except Refused as refused:
        assert refused.status in statuses, f"refused {key!r} with {refused.status}, expected {statuses}"
        return
    raise AssertionError(f"accepted {key!r} for name {name!r}, route {route!r} at {now}: {signed}")


# --- the side server's request head ------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_TARGET_PATH = re.compile(r"/[^\x00-\x20\x7f-\xa0?#]*")
_REFUSALS = (400, 405, 411, 413, 414, 431, 505)


def check_request_head(buffer: bytes) -> None:
    """What arrives on a connection is one sane head of a served method, not yet a head, or refused with a 4xx/505."""
    try:
        length = head_end(buffer)
        if length is None:
            assert len(buffer) <= MAX_HEAD, f"still waiting for the end of a {len(buffer)}-byte head"
            return
        assert 0 < length <= min(len(buffer), MAX_HEAD + 4), f"a head of {length} bytes"
        assert buffer[:length].endswith((b"\n\n", b"\n\r\n")), f"{buffer[:length][-8:]!r} ends no head"
        head = parse_head(buffer[:length])
    except Refused as refused:
        assert refused.status in _REFUSALS, f"refused with {refused.status}"
        return
    assert head.method in METHODS and head.version[0] == 1, head  # 1.x: RFC 9112 §2.6 reads it as 1.1
    assert _TARGET_PATH.fullmatch(head.path), f"path {head.path!r}"
    for field, value in head.headers.items():
        assert _TOKEN.fullmatch(field), f"header name {field!r}"
        assert _FIELD_VALUE.fullmatch(value), f"header {field}: value {value!r}"
    assert head.version < (1, 1) or "host" in head.headers, "an HTTP/1.1 request without Host"
    assert "transfer-encoding" not in head.headers, "a chunked body"
    if head.method == "PROPFIND":
        assert 0 <= head.body_length <= MAX_BODY and head.headers.get("content-length", "0").isdigit(), head
    else:
        assert head.body_length == 0 and head.headers.get("content-length", "0") == "0", "a body"
    assert isinstance(head.keep_alive, bool)


# --- RPC form and arguments --------------------------------------------------


def _sample_method(path: str, size: int, overwrite: bool = False) -> None:
    """Stands for an exported method: two arguments, a third optional."""


_SAMPLE_TYPES = (str, (int, float))


def check_rpc_form(content_type: str, body: bytes) -> None:
    """A form body decodes to a well-formed call or is refused with 400/415; arguments then fit or get 400."""
    try:
        call = parse_call(content_type, body)
    except BadRequest as refused:
        assert refused.status in (400, 415), refused.status
        return
    assert METHOD_NAME.fullmatch(call.method) and isinstance(call.args, list), call
    assert isinstance(call.raw_content, bool) and isinstance(call.client_vo, str), call
    try:
        check_arguments(call.method, _sample_method, _SAMPLE_TYPES, call.args)
    except BadRequest as refused:
        assert refused.status == 400 and call.method in str(refused), refused
        return
    assert 2 <= len(call.args) <= 3 and isinstance(call.args[0], str), call.args
    assert isinstance(call.args[1], (int, float)) and not isinstance(call.args[1], bool), call.args


def _read_form(body: bytes, cuts: list[int], last: bool = False) -> dict[str, str] | str:
    """The kept fields of ``body`` fed in the chunks ``cuts`` make, or the refusal's message; ``last``:
    the reader is told which chunk is the body's last."""
    reader = FormReader(CALL_FIELDS)
    chunks = [body[start:end] for start, end in itertools.pairwise([0, *sorted(set(cuts)), len(body)])]
    try:
        for number, chunk in enumerate(chunks, 1):
            reader.feed(chunk, last=last and number == len(chunks))
        return reader.finish()
    except FormError as refused:
        return str(refused)


def check_form_chunking(body: bytes, cuts: list[int]) -> None:
    """A form reads the same however its body is cut into chunks, and as ``parse_qsl`` (strict) reads it;
    a form that is refused is refused however cut (for the first fault its reader meets)."""
    whole = _read_form(body, [])
    cuts = [cut % (len(body) + 1) for cut in cuts]
    for told in (_read_form(body, [], last=True), _read_form(body, cuts), _read_form(body, cuts, last=True)):
        assert told == whole or (isinstance(told, str) and isinstance(whole, str)), (body, cuts, whole, told)
    try:
        text = body.decode()
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="surrogateescape")
    except (ValueError, UnicodeDecodeError):
        assert isinstance(whole, str), (body, whole)
        return
    kept = [(name, value) for name, value in pairs if name in CALL_FIELDS]
    if len({name for name, _ in kept}) != len(kept) or not all(_utf8(value) for _, value in kept):
        assert isinstance(whole, str), (body, whole)  # a field twice, or one not UTF-8 once decoded
    else:
        assert whole == dict(kept), (body, whole)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_rpc_call(method: str, args: list[Any], raw_content: bool) -> None:
    """A call as DIRAC's client sends it (``args`` of wire values) comes out of the form as it went in."""
    body = urlencode({"method": method, "args": codec.encode(args), "rawContent": str(raw_content), "clientVO": "vo"})
    call = parse_call(FORM_TYPE, body.encode())
    assert call.method == method and call.raw_content is raw_content and call.client_vo == "vo", call
    assert _same(call.args, wire_form(args)), f"{args!r} arrived as {call.args!r}"
    check_rpc_form(FORM_TYPE, body.encode())

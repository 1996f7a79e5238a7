"""Property-based fuzzing of the parsers that read what clients send (docs/fuzzing.md).

The properties live in fuzz/properties.py, shared with the coverage-guided
atheris harnesses of ``python -m fuzz``; here hypothesis feeds them inputs
shaped after the grammar each parser expects, plus plain noise. The default
profile is short enough for every test run; ``SEPROXY_FUZZ_PROFILE=long``
runs many more examples per property.
"""

from __future__ import annotations

import datetime
import functools
import os
import string
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import properties
from seproxy.http_side.grants import Grant
from seproxy.http_side.signing import Signer
from seproxy.proxy.file_ids import GET_AREA, PUT_AREA
from seproxy.rpc.call import FORM_TYPE
from seproxy.transfer import codec

_UNCHECKED = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("seproxy-fuzz-short", max_examples=300, deadline=None, suppress_health_check=_UNCHECKED)
settings.register_profile("seproxy-fuzz-long", max_examples=30_000, deadline=None, suppress_health_check=_UNCHECKED)
# An unknown name fails loudly (hypothesis raises InvalidArgument) instead of running the short profile.
fuzz = settings.get_profile(f"seproxy-fuzz-{os.environ.get('SEPROXY_FUZZ_PROFILE', 'short')}")

# Any code point, lone surrogates included: JSON's \ud800 escapes can carry them.
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=40)
latin1_text = st.text(st.characters(max_codepoint=255), max_size=40)

# --- the codec ---------------------------------------------------------------


def _plain_values(text: st.SearchStrategy[str]) -> st.SearchStrategy:
    """Values the codec promises to carry unchanged, with strings drawn from ``text``."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
        | st.binary(max_size=40)
        | st.datetimes().map(lambda moment: moment.replace(microsecond=0))
        | st.dates()
    )
    keys = text.filter(lambda key: key != codec.TAG)  # the one key encode refuses
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=20
    )


wire_values = _plain_values(any_text)
# The RPC form refuses lone surrogates in arguments, which no file name or log line could hold.
unicode_values = _plain_values(st.text(max_size=40))


def _nested_lists(depth: int) -> list:
    """Lists ``depth`` deep: around ``MAX_DEPTH`` an off-by-one between encode and decode would show."""
    return functools.reduce(lambda inner, _: [inner], range(depth - 1), [0])


_near_depth_limit = st.integers(codec.MAX_DEPTH - 3, codec.MAX_DEPTH + 3)
_nestings = _near_depth_limit | st.integers(0, 3000)
_offsets = st.integers(-23 * 60, 23 * 60).map(lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes)))
_calendar_ends = st.sampled_from([datetime.datetime.min, datetime.datetime.max])
_awkward = (
    st.datetimes(timezones=st.none() | _offsets)
    # Aware datetimes at the ends of the calendar, which UTC may push past year 1 or 9999.
    | st.builds(datetime.datetime.replace, _calendar_ends, tzinfo=_offsets)
    | st.integers(min_value=10**4290, max_value=10**4310)
    | st.floats()
    | st.binary(max_size=20).map(bytearray)
    | st.sets(st.integers() | st.text(max_size=5), max_size=4)
    | st.fixed_dictionaries({"__dCls": st.sampled_from(["dt", "date", "b64", "X509Chain"]), "obj": st.text(max_size=5)})
    | _nestings.map(_nested_lists)
)
# What a caller may hand to encode: everything above, plus what it converts or refuses.
any_values = st.recursive(
    wire_values | _awkward,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(any_text | st.sampled_from(["__dCls", "obj"]), inner, max_size=4),
    max_leaves=20,
)
_numbers = (
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,8})?([eE][-+]?[0-9]{1,4})?", fullmatch=True)
    | st.integers(4290, 4400).map("7".__mul__)  # around sys.get_int_max_str_digits()
)
_tag_texts = st.builds(
    '{{"__dCls":"{}","obj":"{}"}}'.format,
    st.sampled_from(["dt", "date", "b64", "set", "X509Chain", ""]),
    st.from_regex(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}( [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})?", fullmatch=True)
    | st.from_regex(r"[A-Za-z0-9+/=]{0,12}", fullmatch=True)
    | st.text(max_size=10),
)
_json_texts = st.recursive(
    _numbers | _tag_texts | st.sampled_from(["null", "true", "NaN", "-Infinity", '"\\ud800"', '"x"', "[", "}"]),
    lambda inner: st.lists(inner, max_size=4).map(lambda items: f"[{','.join(items)}]")
    | st.lists(st.tuples(st.sampled_from(['"__dCls"', '"obj"', '"k"']), inner), max_size=3).map(
        lambda pairs: "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"
    ),
    max_leaves=15,
)
codec_inputs = (
    _json_texts
    | _json_texts.map(str.encode)
    | any_text
    | st.binary(max_size=60)
    | st.builds("{0}{1}{2}".format, _nestings.map("[".__mul__), _json_texts, _nestings.map("]".__mul__))
)


@fuzz
@given(wire_values)
def test_codec_carries_wire_values_unchanged(value):
    assert properties.check_encode(value), f"{value!r} was refused"


@fuzz
@given(any_values)
def test_codec_encodes_or_refuses_any_value(value):
    properties.check_encode(value)


@fuzz
@given(codec_inputs)
def test_codec_decodes_or_refuses_any_text(text):
    properties.check_decode(text)


# --- the Range parser --------------------------------------------------------

_sizes = st.integers(0, 3) | st.integers(0, 2**45)
_range_headers = (
    st.from_regex(r"\s*[Bb][Yy][Tt][Ee][Ss]\s*=\s*\d*\s*-\s*\d*\s*(,\s*\d*-\d*)?", fullmatch=True)
    | st.builds("bytes={}-{}".format, st.integers(0, 10**25), st.integers(0, 10**25) | st.just(""))
    | any_text
)


@fuzz
@given(_range_headers, _sizes)
def test_range_parser_stays_inside_the_file(header, size):
    properties.check_range(header, size)


_range_lists = st.lists(
    st.tuples(st.integers(0, 2000) | st.just(""), st.integers(0, 2000) | st.just("")), min_size=1, max_size=600
).map(lambda specs: "bytes=" + ",".join(f"{a}-{b}" for a, b in specs))


@fuzz
@given(_range_lists | _range_headers, _sizes)
def test_range_lists_stay_inside_the_file_and_are_merged(header, size):
    properties.check_range_list(header, size)


@fuzz
@given(
    st.none() | st.integers(0, 2**70),
    st.none() | st.integers(0, 2**70),
    _sizes,
    st.integers(0, 25),
    st.sampled_from(["", " ", "\t "]),
)
def test_range_parser_reads_numbers_as_written(first, last, size, zeros, blank):
    properties.check_range_spec(first, last, size, zeros, blank)


# --- the file-id resolver ------------------------------------------------------

_areas = st.sampled_from([GET_AREA, PUT_AREA])
_names = (
    st.text(st.sampled_from("./\\\x00\n\x85 a") | any_char, min_size=1, max_size=260)
    | st.sampled_from([".", "..", "...", "/etc/passwd", "../x", "a\n", " ", "x" * 256])
)
_file_ids = st.builds("{}/{}".format, st.sampled_from([GET_AREA, PUT_AREA, "getfile", "", "."]), _names) | any_text


@fuzz
@given(_file_ids, _areas)
def test_file_ids_name_a_file_inside_their_area(file_id, area):
    properties.check_file_id(file_id, area)


# --- the URL signer ----------------------------------------------------------

_key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
_secrets = st.binary(min_size=32, max_size=48)
_signers = st.builds(Signer, _key_ids, _secrets)
_link_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
_expiries = st.integers(0, 10**12 - 1)
# Names as the side server checks them: the last path segment, percent-decoded.
_url_segments = st.lists(
    st.characters(max_codepoint=255, exclude_characters="/") | st.integers(0, 255).map("%{:02X}".format), max_size=30
).map("".join)
_served_names = _url_segments.map(properties.served_name) | st.text(max_size=30)
_routes = st.text(st.characters(max_codepoint=255, exclude_characters="/"), max_size=16)


@fuzz
@given(_signers, _link_ids, _expiries, _served_names, _routes)
def test_signed_keys_are_accepted_until_expiry_plus_skew(signer, link_id, expires, name, route):
    properties.check_signed_key(signer, link_id, expires, name, route)


@fuzz
@given(
    _signers,
    _link_ids,
    _expiries,
    _served_names,
    _routes,
    st.sampled_from(properties.SIGNED_PARTS),
    st.integers(0, 200),
    st.characters(),
    st.sampled_from(properties.MUTATIONS),
)
def test_any_one_character_change_is_refused(signer, link_id, expires, name, route, part, position, char, kind):
    properties.check_mutation_refused(signer, link_id, expires, name, route, part, position, char, kind)


_grants = st.builds(Grant, st.text(max_size=20), st.text(max_size=20), st.lists(st.text(max_size=80), min_size=1, max_size=8).map(tuple), st.booleans())


@fuzz
@given(_signers, _link_ids, _expiries, _served_names, _routes, _grants, st.integers(0, 400), st.characters(), st.sampled_from(properties.MUTATIONS))
def test_keys_carry_their_grant_and_any_change_is_refused(signer, link_id, expires, name, route, grant, position, char, kind):
    properties.check_granted_key(signer, link_id, expires, name, route, grant, position, char, kind)


@fuzz
@given(_signers, _key_ids, _secrets, st.booleans(), _link_ids, _expiries, _served_names)
def test_keys_of_another_secret_or_key_id_are_refused(ours, key_id, secret, same_id, link_id, expires, name):
    theirs = Signer(ours.key_id if same_id else key_id, secret)
    properties.check_foreign_key(ours, theirs, link_id, expires, name, "")


@fuzz
@given(_key_ids, _secrets, _key_ids, _secrets, _link_ids, _expiries, _served_names, _routes)
def test_keys_of_a_retired_secret_stay_valid_until_they_expire(
    old_id, old_secret, new_id, new_secret, link_id, expires, name, route
):
    properties.check_retired_key(old_id, old_secret, new_id, new_secret, link_id, expires, name, route)


_keys = (
    st.builds(
        "{}.{}.{}.{}".format,
        _key_ids,
        _link_ids | st.text(string.hexdigits, max_size=33),
        st.integers(0, 10**13),
        st.from_regex(r"[A-Za-z0-9_-]{42,44}", fullmatch=True),
    )
    | st.builds(
        "{}.{}.{}.{}.{}".format,
        _key_ids,
        _link_ids,
        st.integers(0, 10**13),
        st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9_-]{42,44}", fullmatch=True),
    )
    | any_text
)


@fuzz
@given(_signers, _keys, _served_names, _routes, st.floats(0, 2e12))
def test_any_key_string_is_refused_unless_genuine(signer, key, name, route, now):
    properties.check_any_key(signer, key, name, route, now)


# --- the side server's request head ------------------------------------------

_tokens = st.text(string.ascii_letters + string.digits + "!#$%&'*+.^_`|~-", min_size=1, max_size=12)
_path_text = st.text(st.sampled_from("/a%?#\xe9"), max_size=4)
_targets = (
    st.sampled_from(["/", "/k/name", "http://host/a?b#c", "*", "/a%20b"])
    | latin1_text
    | st.builds("/{}{}{}".format, _path_text, st.sampled_from("\x00\x01\x1b\x7f\x85\x9f\xa0"), _path_text)
)
_request_lines = st.builds(
    "{} {} {}".format,
    st.sampled_from(["GET", "HEAD", "POST", "get", "G ET"]) | _tokens,
    _targets,
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.10", "http/1.1"]),
)
_fields = st.builds(
    "{}:{}".format,
    st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "Range"]) | _tokens,
    st.sampled_from([" x", " 0", " 1", "", " close", "\tkeep-alive \t", " a\x01b", " " * 40 + "\x00"]) | latin1_text,
)
_heads = st.builds(
    lambda line, fields, end: (end.join([line, *fields]) + end + end).encode("latin-1"),
    _request_lines,
    st.lists(_fields, max_size=6),
    st.sampled_from(["\r\n", "\n"]),
)


# Heads that are right but for the target: what the server does with an odd path shows.
_plain_heads = st.builds("GET {} HTTP/1.1\r\nHost: h\r\n\r\n".format, _targets).map(lambda head: head.encode("latin-1"))


@fuzz
@given(_heads | _plain_heads | st.binary(max_size=200) | _heads.map(lambda head: head[: len(head) // 2]))
def test_request_heads_are_served_or_refused(buffer):
    properties.check_request_head(buffer)


# --- RPC form and arguments --------------------------------------------------

_method_names = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,63}", fullmatch=True)
_field_values = _method_names | _json_texts | any_text
_forms = st.fixed_dictionaries(
    {"method": _method_names | _method_names.map("{}\n".format) | any_text},
    optional={name: _field_values for name in ("args", "rawContent", "extraCredentials", "clientVO", "other")},
).map(lambda fields: urlencode(fields, errors="surrogatepass").encode())
_content_types = st.sampled_from([FORM_TYPE, f"{FORM_TYPE}; charset=UTF-8", "application/json", "", "text/plain"])


@fuzz
@given(_content_types, _forms | st.binary(max_size=80))
def test_rpc_forms_become_calls_or_clear_refusals(content_type, body):
    properties.check_rpc_form(content_type, body)


_form_bytes = st.lists(
    st.sampled_from([b"&", b"=", b"%", b"+", b"%2", b"%26", b"%3D", b"%C3%A9", b"\xc3\xa9", b"\xff", b"a", b"9"])
    | st.sampled_from([name.encode() for name in ("method", "args", "clientVO", "rawContent", "other")]),
    max_size=24,
).map(b"".join)


@fuzz
@given(_forms | _form_bytes, st.lists(st.integers(0, 200), max_size=6))
def test_forms_read_alike_however_their_body_is_cut(body, cuts):
    properties.check_form_chunking(body, cuts)


@fuzz
@given(_method_names, st.lists(unicode_values, max_size=4), st.booleans())
def test_rpc_calls_arrive_as_sent(method, args, raw_content):
    properties.check_rpc_call(method, args, raw_content)

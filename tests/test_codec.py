"""The DIRAC JSON codec: round trips and refusals."""

import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seproxy.transfer import codec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    | st.binary() | st.datetimes().map(lambda d: d.replace(microsecond=0)) | st.dates(),
    # A dict key "__dCls" is refused, not sent (test_a_dict_with_the_reserved_key_is_refused).
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text().filter(lambda key: key != "__dCls"), inner, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_round_trip(value):
    assert codec.decode(codec.encode(value)) == value


@pytest.mark.parametrize("value", [{"__dCls": None}, [1, {"a": {"__dCls": "dt", "obj": "x"}}], {"when": datetime.date(2026, 1, 1), "__dCls": 1}])
def test_a_dict_with_the_reserved_key_is_refused(value):
    with pytest.raises(codec.CodecError, match="'__dCls' is reserved for tagged values"):
        codec.encode(value)


def test_wire_forms_match_dirac():
    when = datetime.datetime(2026, 11, 21, 8, 30, 5, 123456)
    encoded = json.loads(codec.encode([when, when.date(), b"\x00\xff", (1, 2)]))
    assert encoded == [
        {"__dCls": "dt", "obj": "2026-11-21 08:30:05"},
        {"__dCls": "date", "obj": "2026-11-21"},
        {"__dCls": "b64", "obj": "AP8="},
        [1, 2],
    ]


def test_tuples_travel_as_lists():
    assert codec.decode(codec.encode({"t": (1, (2, 3))})) == {"t": [1, [2, 3]]}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"__dCls": "X509Chain", "__dMod": "os", "obj": "x"}', "unknown __dCls"),
        ('{"__dCls": "JSerializable", "obj": "x"}', "unknown __dCls"),
        ('{"__dCls": "dt", "obj": "yesterday"}', "bad value"),
        ('{"__dCls": "b64", "obj": "***"}', "bad value"),
        ('{"__dCls": "dt", "obj": 5}', "exactly the keys"),
        ('{"__dCls": "dt", "obj": "2026-01-01 00:00:00", "extra": 1}', "exactly the keys"),
        ("[1, 2", "invalid JSON"),
        ("NaN", "not a valid JSON number"),
        ("[Infinity]", "not a valid JSON number"),
        (b"\xff\xfe[", "UTF-8"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ],
)
def test_refusals(text, fragment):
    with pytest.raises(codec.CodecError, match=fragment):
        codec.decode(text)


def test_nothing_is_imported_from_the_wire(monkeypatch):
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name, *a: imported.append(name))
    with pytest.raises(codec.CodecError):
        codec.decode('{"__dCls": "Popen", "__dMod": "subprocess", "obj": "x"}')
    assert imported == []


def test_encoding_refuses_unknown_types():
    with pytest.raises(codec.CodecError, match="cannot encode a object"):
        codec.encode(object())
    with pytest.raises(codec.CodecError):
        codec.encode(float("nan"))

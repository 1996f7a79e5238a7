"""Harness ``signing``: the input is ``MODE\\nEXPIRES\\nROUTE\\nSEGMENT\\nREST``.

MODE ``sign`` signs a key and checks it around its expiry; ``mutate`` changes
one character (REST: ``PART KIND POSITION CHAR``, see properties.mutate);
``foreign`` checks a key made with another secret (REST empty) or another key
id; ``retired`` checks keys of a replaced secret (REST); ``grant`` signs a
key carrying a grant and changes one character of it (REST: ``KIND
POSITION CHAR LFN,LFN,...``); any other MODE
checks REST as a key. SEGMENT is the URL's last path
segment, percent-decoded as the side server does.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["seproxy"]):
    from seproxy.http_side.grants import Grant
    from seproxy.http_side.signing import Signer

from fuzz import properties
from fuzz.inputs import fields, number, raw

SECRET = b"a URL signing secret for fuzzing only"
OURS = Signer("fuzz", SECRET)
THEIRS = (Signer("fuzz", SECRET[::-1]), Signer("other", SECRET))
LINK_ID = "0123456789abcdef" * 2


def TestOneInput(data: bytes) -> None:
    mode, expires_text, route_text, segment, rest = fields(data, 5)
    expires = number(expires_text, 10**12) or 0
    route = raw(route_text).decode("latin-1").replace("/", "")  # one path segment, as the server reads it
    name = properties.served_name(segment)
    if mode == "sign":
        properties.check_signed_key(OURS, LINK_ID, expires, name, route)
    elif mode == "mutate":
        part, kind, position, char = (rest.split(" ", 3) + [""] * 4)[:4]
        properties.check_mutation_refused(
            OURS,
            LINK_ID,
            expires,
            name,
            route,
            part if part in properties.SIGNED_PARTS else "key",
            number(position, 2**31) or 0,
            raw(char).decode("latin-1")[:1] or "0",
            kind if kind in properties.MUTATIONS else "substitute",
        )
    elif mode == "grant":
        kind, position, char, lfns = (rest.split(" ", 3) + [""] * 4)[:4]
        grant = Grant("fuzz", "group", tuple(raw(lfns).decode("latin-1").split(",")), False)
        properties.check_granted_key(
            OURS,
            LINK_ID,
            expires,
            name,
            route,
            grant,
            number(position, 2**31) or 0,
            raw(char).decode("latin-1")[:1] or "0",
            kind if kind in properties.MUTATIONS else "substitute",
        )
    elif mode == "foreign":
        properties.check_foreign_key(OURS, THEIRS[bool(rest)], LINK_ID, expires, name, route)
    elif mode == "retired":
        properties.check_retired_key("old", raw(rest), OURS.key_id, SECRET, LINK_ID, expires, name, route)
    else:
        properties.check_any_key(OURS, rest, name, route, float(expires))

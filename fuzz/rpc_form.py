"""Harness ``rpc_form``: the input is ``CONTENT-TYPE\\nBODY``, an RPC POST."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["seproxy"]):
    from seproxy.rpc import arguments, call  # noqa: F401 (instrumented here, called by the properties)

from fuzz import properties
from fuzz.inputs import fields, raw


def TestOneInput(data: bytes) -> None:
    content_type, body = fields(data, 2)
    properties.check_rpc_form(content_type, raw(body))

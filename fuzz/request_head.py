"""Harness ``request_head``: the input is what a client sent on a side-server connection."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["seproxy"]):
    from seproxy.http_side import request  # noqa: F401 (instrumented here, called by the properties)

from fuzz import properties


def TestOneInput(data: bytes) -> None:
    properties.check_request_head(data)

"""Harness ``codec``: the input is the text of an RPC ``args`` field (any bytes)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["seproxy"]):
    from seproxy.transfer import codec  # noqa: F401 (instrumented here, called by the properties)

from fuzz import properties


def TestOneInput(data: bytes) -> None:
    properties.check_decode(data)

"""Harness ``byte_range``: the input is ``SIZE\\nRANGE-HEADER``; a first line that is not a
size makes the file as long as the header."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["seproxy"]):
    from seproxy import byte_range  # noqa: F401 (instrumented here, called by the properties)

from fuzz import properties
from fuzz.inputs import fields, number


def TestOneInput(data: bytes) -> None:
    size_text, header = fields(data, 2)
    size = number(size_text, 2**63)
    properties.check_range(header, len(header) if size is None else size)
    properties.check_range_list(header, len(header) if size is None else size)

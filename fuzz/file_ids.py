"""Harness ``file_ids``: the input is a file id, resolved in both cache areas."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["seproxy"]):
    from seproxy.proxy.file_ids import GET_AREA, PUT_AREA

from fuzz import properties
from fuzz.inputs import fields


def TestOneInput(data: bytes) -> None:
    (file_id,) = fields(data, 1)
    for area in (GET_AREA, PUT_AREA):
        properties.check_file_id(file_id, area)

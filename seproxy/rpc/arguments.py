"""Argument checks from ``types_<method>``, before a handler runs.

DIRAC declares the expected types of the leading positional arguments as a
list, each item a type or a tuple of alternatives. The arity is checked
against the method's signature too, so that a wrong call is answered with a
message instead of a ``TypeError`` deep inside the handler.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from seproxy.rpc.call import BadRequest

TypeSpec = type | tuple[type, ...]


def _names(spec: TypeSpec) -> str:
    types = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(_wire_name(t) for t in types)


# What a caller sees on the wire, rather than Python's type names.
_WIRE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "a dict",
    bytes: "bytes (b64)",
    type(None): "null",
}


def _wire_name(kind: type) -> str:
    return _WIRE_NAMES.get(kind, f"a {kind.__name__}")


def _matches(value: Any, spec: TypeSpec) -> bool:
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types and object not in types:
        return False  # True is an int in Python, but not on the wire
    if isinstance(value, int) and not isinstance(value, bool) and float in types:
        return True
    return isinstance(value, types)


@functools.lru_cache(maxsize=1024)
def _signature(function: Callable[..., Any]) -> inspect.Signature:
    # Keyed on the plain function: a bound method is a new object per request.
    return inspect.signature(function)


@functools.lru_cache(maxsize=1024)
def _arity(function: Callable[..., Any], skip: int) -> tuple[float, float]:
    """The fewest and most positional arguments that always bind to ``function`` past its first
    ``skip`` parameters; (1, 0), which no count is within, when a keyword-only one is required."""
    fewest, most = 0, 0.0
    for parameter in list(_signature(function).parameters.values())[skip:]:
        if parameter.kind is parameter.VAR_POSITIONAL:
            most = float("inf")
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return (1, 0)
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            fewest += parameter.default is parameter.empty
            most += 1
    return (fewest, most)


def check_arguments(method: str, function: Callable[..., Any], types: Sequence[TypeSpec], args: list[Any]) -> None:
    """Raise ``BadRequest`` naming the argument when ``args`` does not fit."""
    unbound = getattr(function, "__func__", None)
    fewest, most = _arity(unbound, 1) if unbound is not None else _arity(function, 0)
    try:
        # Binding builds a mapping of every argument; a count known to fit needs none.
        if not fewest <= len(args) <= most:
            if unbound is not None:
                _signature(unbound).bind(None, *args)  # None stands for self
            else:
                _signature(function).bind(*args)
    except TypeError as exc:
        raise BadRequest(f"{method}: wrong number of arguments ({len(args)} given): {exc}") from None
    for position, (value, spec) in enumerate(zip(args, types), start=1):
        if not _matches(value, spec):
            raise BadRequest(
                f"{method}: argument {position} must be {_names(spec)}, got {_wire_name(type(value))}"
            )
    if len(args) < len(types):
        raise BadRequest(f"{method}: expected at least {len(types)} arguments, got {len(args)}")

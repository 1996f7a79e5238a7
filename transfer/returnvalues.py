"""DIRAC-style return values.

DIRAC code never raises across an API boundary: it returns ``{"OK": True,
"Value": ...}`` or ``{"OK": False, "Message": ..., "Errno": N}``. seproxy
speaks that convention at the RPC edge and in the client API that DIRAC users
call, and uses plain exceptions inside; ``returnValueOrRaise`` and
``convertToReturnValue`` cross between the two worlds.
"""

from __future__ import annotations

import errno as errno_codes
import functools
import os
from collections.abc import Callable
from typing import Any, TypeGuard, TypeVar

ReturnValue = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])


def S_OK(value: Any = None) -> ReturnValue:
    """A successful result carrying ``value``."""
    return {"OK": True, "Value": value}


def S_ERROR(*args: Any) -> ReturnValue:
    """A failed result: ``S_ERROR(message)`` or ``S_ERROR(errno, message)``.

    With an errno the message reads as DIRAC writes it,
    ``"<strerror> ( <errno> : <message>)"``, so that users see the familiar
    text and ``Errno`` lets code test the cause without parsing it.
    """
    if not args:
        return {"OK": False, "Message": "", "Errno": 0}
    if isinstance(args[0], int) and not isinstance(args[0], bool):
        code = args[0]
        detail = " ".join(str(a) for a in args[1:])
        reason = os.strerror(code) if code in errno_codes.errorcode else f"Error {code}"
        message = f"{reason} ( {code} : {detail})" if detail else reason
        return {"OK": False, "Message": message, "Errno": code}
    return {"OK": False, "Message": " ".join(str(a) for a in args), "Errno": 0}


def isReturnStructure(value: Any) -> TypeGuard[ReturnValue]:
    """True when ``value`` is a well-formed S_OK or S_ERROR dict."""
    if not isinstance(value, dict) or not isinstance(value.get("OK"), bool):
        return False
    if value["OK"]:
        return "Value" in value
    return isinstance(value.get("Message"), str)


class SErrorException(Exception):
    """An S_ERROR travelling as an exception through code that prefers them."""

    def __init__(self, result: ReturnValue | str, errno: int = 0) -> None:
        if isinstance(result, str):
            result = S_ERROR(errno, result) if errno else S_ERROR(result)
        self.result = result
        self.errno: int = result.get("Errno", 0)
        super().__init__(result["Message"])


def returnValueOrRaise(result: ReturnValue, errorCode: int = 0) -> Any:
    """The ``Value`` of an S_OK; an S_ERROR raises ``SErrorException``.

    ``errorCode`` stamps an errno on errors that came back without one.
    """
    if not isReturnStructure(result):
        raise TypeError(f"not an S_OK/S_ERROR structure: {result!r:.200}")
    if result["OK"]:
        return result["Value"]
    if errorCode and not result.get("Errno"):
        result = {**result, "Errno": errorCode}
    raise SErrorException(result)


def convertToReturnValue(func: F) -> F:
    """Wrap a function that raises into one that returns S_OK/S_ERROR.

    ``SErrorException`` and ``OSError`` carry messages meant for the caller
    and become S_ERROR; any other exception is a bug and propagates, so that
    the RPC edge can log it and answer a generic error instead of leaking it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> ReturnValue:
        try:
            return S_OK(func(*args, **kwargs))
        except SErrorException as exc:
            return exc.result
        except OSError as exc:
            return S_ERROR(exc.errno or errno_codes.EIO, exc.strerror or str(exc))

    return wrapper  # type: ignore[return-value]

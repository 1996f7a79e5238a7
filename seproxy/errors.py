"""How a failure is answered: one table from exception to (HTTP status, ``S_ERROR``) for every edge.

Code inside the service raises plain exceptions whose messages are written
for the caller: ``SErrorException`` (an ``S_ERROR`` on its way out),
``OSError`` (storage and cache trouble, with an errno), ``ValueError``
(malformed input: a file id, an option, a checksum that is not hex),
``VerificationError`` (bytes that are not the bytes announced) and the
executor's cancellations. The RPC handler, the streamed upload and any
later door turn them into answers here and nowhere else, so one failure
reads the same on every route. Any other exception is a bug: ``failure``
answers it with a generic message carrying the request id, and the edge
logs the traceback, which never reaches the client.

The status matters where the body is not an RPC answer (raw bytes, streamed
routes): it must not be 2xx, or a client would take the error text for the
file. RPC answers keep status 200 with the ``S_ERROR`` inside, as DIRAC's
services do: ``rpc_status`` says which status an RPC answer goes out with.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from seproxy.byte_range import RangeNotSatisfiable
from seproxy.cache import VerificationError
from seproxy.rpc.executor import CallCancelled, CallTimeout
from seproxy.transfer import S_ERROR, SErrorException

# The HTTP status of an S_ERROR by its errno; any other errno is a 500.
_STATUS_OF_ERRNO = {
    errno.ENOENT: 404,
    errno.EACCES: 403,
    errno.EPERM: 403,
    errno.EINVAL: 400,
    errno.ENOSYS: 501,
    errno.ENOSPC: 507,
    errno.EDQUOT: 507,
}


# DIRAC 9.1's client (TornadoBaseClient._request) replaces the body of these
# answers with words of its own ("No access to <url>", "<url> is not found",
# "<method> is not implemented"), so the server's reason would never reach a
# DIRAC user; any other non-2xx status ends as "<status> ... for url: <body>".
_DIRAC_HIDES_BODY = frozenset({401, 403, 404, 501})


class Refusal(Exception):
    """A refusal whose HTTP status no errno says: a storage door's 405 (MKCOL of an existing
    directory), 409 (a missing parent, an existing file ``storage.create`` may not replace)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Failure:
    status: int
    result: dict[str, Any]
    # True for an exception nobody expected: the edge logs its traceback.
    bug: bool = False


def status_of(result: dict[str, Any]) -> int:
    """The HTTP status that tells a non-RPC client what an ``S_ERROR`` means."""
    return _STATUS_OF_ERRNO.get(result.get("Errno", 0), 500)


def rpc_status(status: int, raw: bool) -> int:
    """The status an RPC error answer goes out with, ``status`` being what the error means.

    A JSON answer is 200 with the ``S_ERROR`` inside: what DIRAC's services
    send for a refused, unknown or mistyped call, and what every DIRAC client
    shows with its message and errno. A raw-bytes answer (``rawContent``)
    must not be 2xx; those statuses whose body DIRAC's client drops become
    400, which it shows with the body. The errno keeps the meaning.
    """
    if not raw:
        return 200
    return 400 if status in _DIRAC_HIDES_BODY else status


def failure(exc: BaseException, doing: str, request_id: str) -> Failure:
    """The answer to ``exc``, raised while ``doing`` (a method name, "upload") for request ``request_id``."""
    if isinstance(exc, SErrorException):
        return Failure(status_of(exc.result), exc.result)
    if isinstance(exc, Refusal):
        return Failure(exc.status, S_ERROR(exc.code, str(exc)))
    if isinstance(exc, CallTimeout):
        return Failure(504, S_ERROR(errno.ETIMEDOUT, f"{doing}: {exc}"))
    if isinstance(exc, CallCancelled):
        return Failure(500, S_ERROR(errno.ECANCELED, str(exc)))
    if isinstance(exc, VerificationError):
        return Failure(400, S_ERROR(errno.EIO, f"the file did not arrive intact: {exc}"))
    if isinstance(exc, RangeNotSatisfiable):
        return Failure(416, S_ERROR(errno.EINVAL, str(exc)))
    if isinstance(exc, ValueError):
        return Failure(400, S_ERROR(errno.EINVAL, str(exc)))
    if isinstance(exc, OSError):
        result = S_ERROR(exc.errno or errno.EIO, str(exc.strerror or exc))
        return Failure(status_of(result), result)
    message = f"internal error in {doing}; the service log has details (request id {request_id})"
    return Failure(500, S_ERROR(errno.EIO, message), bug=True)

"""Request bodies read as they arrive (Tornado's ``stream_request_body``): refusals that reach the
client, and a deadline for a body that trickles.

``StreamedBodyHandler`` solves two troubles of such handlers for its subclasses (the RPC handler
and the streamed upload):

- A refusal sent before the body is in (a form over the limit, a caller who may not upload) is
  followed by Tornado closing the connection. Body bytes still arriving then make the kernel
  reset it, and a client that is still sending (most read nothing before they have sent all)
  loses the answer in the reset. So a refused body of up to ``DRAIN_LIMIT`` bytes is read and
  dropped, and the refusal answered when it ends; only a larger one is answered at once.
- Tornado limits the time a request head may take (``idle_connection_timeout``) but not a body:
  a client that sends its headers and then one byte a second, or nothing, would keep its
  connection and its handler for as long as it likes, and a few hundred such clients use up
  ``max_connections``. ``BodyDeadline`` applies Apache's ``mod_reqtimeout`` rule: a body gets
  ``grace`` seconds plus one second for every ``MIN_BODY_RATE`` bytes that arrive. A body that
  keeps up, however large, is never cut; one that stalls or trickles gets a 408 within ``grace``
  seconds.
"""

from __future__ import annotations

import errno
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.ioloop import IOLoop

from seproxy.rpc.default_head import DefaultHead
from seproxy.transfer import S_ERROR, codec

# Bytes per second a body must average, past its first ``grace`` seconds.
MIN_BODY_RATE = 1024
# The largest refused body that is read (and dropped) so that its refusal reaches the client.
DRAIN_LIMIT = 64 * 1024 * 1024


def _never_called(message: str) -> None:
    """What a stopped deadline calls: nothing is due any more."""


class BodyDeadline:
    """Calls ``expired(message)`` once, on the event loop, if the body falls behind; ``stop()`` when it is in.

    Deadlines are checked once a second by one timer per event loop
    (``_Watch``) rather than each by a timer of its own: a timer per request
    costs every small RPC call a heap insertion and removal, and a deadline
    measured in seconds needs no finer check.
    """

    def __init__(self, grace: float, expired: Callable[[str], None]) -> None:
        self._watch = _Watch.of(IOLoop.current())
        self._started = self._watch.loop.time()
        self._grace = grace
        self._received = 0
        self._expired = expired
        self._watch.add(self)

    def received(self, count: int) -> None:
        self._received += count

    def stop(self) -> None:
        self._watch.discard(self)
        # ``expired`` is a bound method of the handler, which holds this deadline: dropped, the handler
        # and its request are freed as soon as they are done with, not by the cyclic garbage collector.
        self._expired = _never_called

    def due(self) -> float:
        return self._started + self._grace + self._received / MIN_BODY_RATE

    def expire(self, now: float) -> None:
        elapsed = now - self._started
        self._expired(
            f"the request body came too slowly: {self._received} bytes in {elapsed:.0f} s; a body must "
            f"arrive at {MIN_BODY_RATE} bytes/s or more after its first {self._grace:g} s "
            "(service.idle_connection_timeout)"
        )


class _BodyInAlready:
    """The deadline of a body Tornado read whole before the handler began: there is nothing to watch,
    and a small call is spared the watch's bookkeeping."""

    def received(self, count: int) -> None:
        pass

    def stop(self) -> None:
        pass


_BODY_IN_ALREADY = _BodyInAlready()


class _Watch:
    """The bodies being read on one event loop, checked every ``CHECK_EVERY`` seconds while there are any."""

    CHECK_EVERY = 1.0
    _loops: ClassVar[weakref.WeakKeyDictionary[IOLoop, _Watch]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: IOLoop) -> None:
        self.loop = loop
        self._deadlines: set[BodyDeadline] = set()
        self._timer: object | None = None

    @classmethod
    def of(cls, loop: IOLoop) -> _Watch:
        watch = cls._loops.get(loop)
        if watch is None:
            watch = cls._loops[loop] = cls(loop)
        return watch

    def add(self, deadline: BodyDeadline) -> None:
        self._deadlines.add(deadline)
        if self._timer is None:
            self._timer = self.loop.call_later(self.CHECK_EVERY, self._check)

    def discard(self, deadline: BodyDeadline) -> None:
        self._deadlines.discard(deadline)

    def _check(self) -> None:
        now = self.loop.time()
        for deadline in [d for d in self._deadlines if d.due() <= now]:
            self._deadlines.discard(deadline)
            deadline.expire(now)
        self._timer = self.loop.call_later(self.CHECK_EVERY, self._check) if self._deadlines else None


def arrived_whole(request: HTTPServerRequest, limit: int) -> bool:
    """Whether all of ``request``'s body came with its head: a body of at most ``limit`` bytes that
    announced its length.

    Read as it arrives, a body costs the event loop two more turns per
    request than one Tornado reads whole (the handler runs before the body,
    then waits for it). A body that is already here cannot trickle, so its
    deadline has nothing to do; anything else (larger, chunked, still
    arriving) is read as it arrives, and so is a compressed one, which
    Tornado would refuse in its own way before the handler could. The
    buffer's size is Tornado's own attribute: if a release renames it,
    every body is read as it arrives again, as before.
    """
    declared = request.headers.get("Content-Length")
    # get_list: a missing header costs no KeyError raised and caught, as ``in`` does.
    if declared is None or not declared.isdigit() or len(declared) > 9 or request.headers.get_list("Content-Encoding"):
        return False
    buffered: int = getattr(getattr(request.connection, "stream", None), "_read_buffer_size", -1)
    return buffered >= int(declared) <= limit


def http_error(status_code: int, reason: str, exc_info: Any = None) -> dict[str, Any]:
    """Tornado's own refusals (405, a URL that is not UTF-8, 500) as an S_ERROR.

    What Tornado said about the request is passed on (the client needs it
    to mend the request); for any other exception, only the status: never a
    traceback.
    """
    error = exc_info[1] if exc_info else None
    detail = ""
    if isinstance(error, tornado.web.HTTPError) and error.log_message:
        detail = ": " + (error.log_message % error.args if error.args else error.log_message)
    code = {400: errno.EINVAL, 404: errno.ENOENT, 405: errno.ENOSYS}.get(status_code, errno.EIO)
    return S_ERROR(code, f"HTTP {status_code}: {reason or 'error'}{detail}")


class StreamedBodyHandler(DefaultHead):
    """Base of handlers that read their body as it arrives; see the module docstring.

    A subclass calls ``guard_body`` in ``initialize``, ``refuse`` to refuse,
    ``keep_chunk`` first in ``data_received`` and ``body_done`` first in its
    HTTP method, and answers with ``send_json``.
    """

    _refusal: tuple[int, dict[str, Any]] | None = None
    _received = 0
    # The largest refused body read to its end (a handler may take more from callers it knows).
    drain_limit = DRAIN_LIMIT

    def guard_body(self, grace: float) -> None:
        """Start the body's deadline: ``grace`` seconds, then ``MIN_BODY_RATE`` (none for a body Tornado
        read whole: it is in already)."""
        self._deadline: BodyDeadline | _BodyInAlready = (
            BodyDeadline(grace, self._too_slow) if self._stream_request_body else _BODY_IN_ALREADY
        )

    def send_json(self, status: int, result: dict[str, Any], encoded: str | None = None) -> None:
        """Finish the request with ``status`` and ``result`` as JSON (``encoded``, if it is already)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(codec.encode(result) if encoded is None else encoded)

    def refuse(self, status: int, result: dict[str, Any]) -> None:
        """Refuse the request: once its body is in (read and dropped), or now when it is too large for that."""
        if self._refusal is None:
            self._refusal = (status, result)
        if not self._drainable():
            self._send_refusal()

    @property
    def refused(self) -> bool:
        return self._refusal is not None

    def keep_chunk(self, chunk: bytes) -> bool:
        """Count a chunk of the body; False when the request is refused and the chunk is to be dropped."""
        self._received += len(chunk)
        self._deadline.received(len(chunk))
        if self._refusal is None:
            return True
        if not self._drainable():
            self._send_refusal()
        return False

    def body_done(self) -> bool:
        """The body is all in: stop its deadline; True when the request was refused (and is now answered)."""
        self._deadline.stop()
        self._send_refusal()
        return self._refusal is not None

    def _drainable(self) -> bool:
        declared = self.request.headers.get("Content-Length")
        if declared is not None and not (declared.isdigit() and int(declared) <= self.drain_limit):
            return False  # too large, or a length Tornado cannot read a body by
        return self._received <= self.drain_limit

    def _send_refusal(self) -> None:
        # Before the body is all in, Tornado closes the connection once this answer is out.
        if self._refusal is not None and not self._finished:
            self.send_json(*self._refusal)

    def _too_slow(self, why: str) -> None:
        if self._refusal is None:
            self._refusal = (408, S_ERROR(errno.ETIMEDOUT, why))
        self._send_refusal()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own refusals as JSON too, never its HTML page or a traceback."""
        self.send_json(status_code, http_error(status_code, self._reason, kwargs.get("exc_info")))

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends the wait for a body that will never come
        self._deadline.stop()

    def on_finish(self) -> None:
        self._deadline.stop()

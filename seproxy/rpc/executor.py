"""Run blocking handler methods off the event loop, each under a time limit.

A thread cannot be killed, so a call that overruns is answered at once with
an error and its work is cancelled cooperatively: the call's ``CallContext``
is marked cancelled, and long-running code (staging loops, uploads) calls
``check_cancelled()`` between chunks, which raises ``CallCancelled`` so the
code's own ``finally`` blocks remove what it had started. Nothing keeps
running on behalf of a caller who has been told the call failed.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class CallCancelled(Exception):
    """The call ran out of time or its client went away; stop and clean up."""


class CallTimeout(Exception):
    """Raised to the event-loop side when a call overruns its limit."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"the call did not finish within {limit:g} s and was cancelled")
        self.limit = limit


@dataclass(eq=False)
class CallContext:
    """What code deep inside a call may ask: how long is left, should I stop."""

    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set to stop this call and the others sharing it (their service is stopping).
    stop: threading.Event | None = None

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        if self.cancelled.is_set() or (self.stop is not None and self.stop.is_set()) or time.monotonic() > self.deadline:
            self.cancelled.set()
            raise CallCancelled("the call was cancelled (time limit reached or client gone)")


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("seproxy_call", default=None)


def current_call() -> CallContext | None:
    """The context of the call running in this thread or task, if any."""
    return _current.get()


def check_cancelled() -> None:
    """Raise ``CallCancelled`` if the current call should stop; cheap enough per chunk."""
    context = _current.get()
    if context is not None:
        context.check()


def call_in(context: CallContext, function: Callable[..., T], *args: Any) -> T:
    """Run ``function(*args)`` in this thread as part of ``context`` (work not tied to one request,
    such as a background staging, under limits of its own)."""
    token = _current.set(context)
    try:
        return function(*args)
    finally:
        _current.reset(token)


def call_within(limit: float, function: Callable[[], T], stop: threading.Event | None = None) -> T:
    """Run ``function`` in this thread as a call of its own, cancelled (``CallTimeout``) past ``limit``
    seconds, or (``CallCancelled``) once ``stop`` is set.

    For work that starts outside an RPC call (a download staged on demand)
    and must stop as a call would: ``check_cancelled`` inside it sees both.
    """
    try:
        return call_in(CallContext(deadline=time.monotonic() + limit, stop=stop), function)
    except CallCancelled:
        if stop is not None and stop.is_set():
            raise
        raise CallTimeout(limit) from None


def _retrieve_outcome(future: asyncio.Future[Any]) -> None:
    # An abandoned (timed-out) call still finishes in its thread; take its
    # outcome so asyncio does not report an exception nobody retrieved.
    if not future.cancelled():
        future.exception()


class CallExecutor:
    """A bounded thread pool with per-call limits."""

    def __init__(self, workers: int, default_limit: float) -> None:
        self.default_limit = default_limit
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc")
        self._running: set[CallContext] = set()

    async def run(self, function: Callable[..., T], *args: Any, limit: float | None = None) -> T:
        """Run ``function(*args)`` in the pool; raise ``CallTimeout`` past the limit.

        Time spent waiting for a free thread counts against the limit too, so a
        saturated service answers instead of queueing work forever.
        """
        limit = self.default_limit if limit is None else limit
        context = CallContext(deadline=time.monotonic() + limit)
        token = _current.set(context)
        try:
            snapshot = contextvars.copy_context()
        finally:
            _current.reset(token)
        future = asyncio.get_running_loop().run_in_executor(self._pool, snapshot.run, function, *args)
        future.add_done_callback(_retrieve_outcome)
        self._running.add(context)
        future.add_done_callback(lambda _: self._running.discard(context))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=limit)
        except TimeoutError:
            context.cancelled.set()
            raise CallTimeout(limit) from None
        except CallCancelled:
            if time.monotonic() < context.deadline:
                raise
            # The call's own check saw the deadline pass a moment before the timer here fired.
            raise CallTimeout(limit) from None
        except asyncio.CancelledError:
            context.cancelled.set()
            raise

    def cancel_all(self) -> None:
        """Ask every running call to stop (service shutdown after the grace period)."""
        for context in list(self._running):
            context.cancelled.set()

    def shutdown(self, wait: bool = True) -> None:
        self.cancel_all()
        self._pool.shutdown(wait=wait, cancel_futures=True)

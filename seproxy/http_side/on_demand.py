"""Serving a URL this instance holds no link for: stage what its grant names, for its user, then serve it.

Behind a load balancer a URL goes to the instance named by its route while
that instance is up, and to another one when it is down; with several
instances sharing nothing but the secret, that other instance has no link
for it. The URL's key carries its grant (``grants``: the LFNs, the user and
group it was made for), signed with the rest, so this instance stages the
files as that user (the application's ``Resolver``: the same rights and
replica walk as ``prepareFileForHTTP``), adds the link to its own store
under the URL's link id (its next requests of that URL are served at
once) and serves it as the original instance would have: the one file, or
the tar archive with the same member names.

Staging may take minutes, and the side server's threads each serve many
connections, so it never runs in them: the answer is a ``Future`` that a
small pool completes (``http.on_demand_stagings`` threads), while the
connection waits without holding a thread. Requests of a URL whose
staging is under way wait for that one; a request needing one more
staging than the pool runs, or than its user's share of the pool
(``http.on_demand_share``, at least one), is answered 503 with
``Retry-After``; a staging
is cancelled after ``service.call_timeout`` (a 504), as a
``prepareFileForHTTP`` call would be.

A single-use URL is never served on demand: its use is recorded in the
link store of the instance that made it, which this one cannot see, so
serving it here could serve it twice. It keeps the 503 saying which
instance holds it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from seproxy.cache import Entry
from seproxy.errors import failure
from seproxy.http_side.grants import Grant, served_names
from seproxy.http_side.links import Link, LinkStore, Member
from seproxy.http_side.response import Response, plain
from seproxy.http_side.signing import CLOCK_SKEW, SignedKey
from seproxy.rpc.executor import call_within

log = logging.getLogger("seproxy.http")

# Seconds a client refused for too many stagings is asked to wait.
RETRY_AFTER = 10


class Resolver(Protocol):
    """The application's half: stage ``grant.lfns`` as ``grant.user`` would, pinned until ``pin_until``.

    Returns the cache entries in the order of the LFNs; raises what
    ``seproxy.errors.failure`` answers (the user may not read a file: EACCES,
    no replica: its errno). Called in a pool thread, never a server thread.
    It returns once the files are whole (``Stager.stage``); a stager that
    opens files still growing would return those instead, and the link be
    served as they grow: only this return type and ``Downloads._serve``
    would change.
    """

    def __call__(self, grant: Grant, pin_until: float) -> list[Entry]: ...


class OnDemand:
    """Stages the files of foreign URLs in a bounded pool and answers them once they are in the cache.

    Requests of one URL that arrive while its files are being staged wait
    for that staging: they take no slot of their own.
    """

    def __init__(self, resolve: Resolver, links: LinkStore, *, stagings: int, share: float, time_limit: float) -> None:
        self._resolve = resolve
        self._links = links
        self._time_limit = time_limit
        self._slots = threading.BoundedSemaphore(stagings)
        self._per_user = max(1, int(stagings * share))
        self._by_user: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(max_workers=stagings, thread_name_prefix="http-on-demand")
        self._stop = threading.Event()
        # Stagings under way, by link id: what each ends with, the link or a refusal (status, message).
        self._under_way: dict[str, Future[Link | _Refusal]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Cancel the stagings under way (at their next chunk): the cache closes next."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def start(self, signed: SignedKey, grant: Grant, serve: Callable[[Link], Response]) -> Response | Future[Response]:
        """The answer to a URL of ``signed``, once its files are staged and ``serve`` made it of its link."""
        with self._lock:
            staging = self._under_way.get(signed.link_id)
            new = staging is None
            if staging is None:
                if self._by_user[grant.user] >= self._per_user:
                    return _busy(
                        f"{self._by_user[grant.user]} file(s) of {grant.user}'s URLs are being staged here now, "
                        "that user's share; try again shortly"
                    )
                if not self._slots.acquire(blocking=False):
                    return _busy("too many files of other instances' URLs are being staged here now; try again shortly")
                try:
                    staging = self._pool.submit(self._stage, signed, grant)
                except RuntimeError:  # the pool is shut down: the service is stopping
                    self._slots.release()
                    return _busy("the service is stopping")
                self._under_way[signed.link_id] = staging
                self._by_user[grant.user] += 1
        if new:
            # Outside the lock: a staging already done runs its callbacks here, at once, and _done takes the lock.
            staging.add_done_callback(functools.partial(self._done, signed.link_id, grant.user))
        answer: Future[Response] = Future()
        staging.add_done_callback(functools.partial(_answer, answer, serve))
        return answer

    def _done(self, link_id: str, user: str, _: Future[Link | _Refusal]) -> None:
        with self._lock:
            del self._under_way[link_id]
            self._by_user[user] -= 1
            if not self._by_user[user]:
                del self._by_user[user]
        self._slots.release()

    def _stage(self, signed: SignedKey, grant: Grant) -> Link | _Refusal:
        started = time.monotonic()
        try:
            entries = call_within(self._time_limit, lambda: self._resolve(grant, signed.expires + CLOCK_SKEW), self._stop)
        except Exception as exc:
            answer = failure(exc, "staging on demand", "-")
            if answer.bug:
                log.error("staging %d file(s) on demand for %s failed", len(grant.lfns), grant.user, exc_info=exc)
            else:
                log.info("link %s:%s on demand for %s refused: %s", signed.key_id, signed.link_id, grant.user, answer.result["Message"])
            return answer.status, answer.result["Message"]
        name, names = served_names(signed.link_id, grant.lfns)
        link = Link(
            signed.link_id, name, len(entries) > 1, grant.user, time.time(), signed.expires, False,
            tuple(Member(entry.id, member) for member, entry in zip(names, entries, strict=True)),
        )  # fmt: skip
        self._links.add(link)
        log.info(
            "link %s:%s on demand for %s: %d file(s) staged in %.1f s",
            signed.key_id, signed.link_id, grant.user, len(entries), time.monotonic() - started,
        )  # fmt: skip
        return link


# An answer that is not the file: status and message.
_Refusal = tuple[int, str]


def _answer(answer: Future[Response], serve: Callable[[Link], Response], staging: Future[Link | _Refusal]) -> None:
    """Complete one request's ``answer`` from the staging it waited for (in the thread that ended it)."""
    try:
        if staging.cancelled():
            answer.set_result(_busy("the service is stopping"))
            return
        outcome = staging.result()
        answer.set_result(serve(outcome) if isinstance(outcome, Link) else plain(*outcome))
    except Exception as exc:  # a bug: the side server logs it and answers 500
        answer.set_exception(exc)


def _busy(message: str) -> Response:
    return plain(503, message, extra=[("Retry-After", str(RETRY_AFTER))])

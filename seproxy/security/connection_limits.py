"""Admission of new connections: at most so many at once, and at most so many from one address.

Without a per-address share, one client opening idle connections (no TLS
hello, no request) fills the whole table and every other client is turned
away for as long as it keeps reconnecting. With it (as nginx's
``limit_conn``), such a client only ever holds its share; and when the table
is full anyway (many addresses), a server evicts one of its idle
connections before refusing a new one, so a waiting client is never worth
more than one that has something to ask. Both servers (the Tornado RPC
server and the threaded side server) keep their counts here; which
connection is idle is theirs to tell.
"""

from __future__ import annotations

import threading
from collections import Counter

FULL = "too many connections open"
ADDRESS_FULL = "too many connections from this address"


class ConnectionLimits:
    """Counts of open connections, overall and per address; safe to use from several threads."""

    def __init__(self, max_connections: int, max_per_address: int, slack: int = 0) -> None:
        self.max_connections = max_connections
        # How far over ``max_connections`` an admission with ``over`` may go (room being made elsewhere).
        self.slack = slack
        self.max_per_address = max_per_address
        self._lock = threading.Lock()
        self._by_address: Counter[str] = Counter()
        self._open = 0

    def admit(self, address: str, *, over: bool = False) -> str | None:
        """None, counting a new connection from ``address``; else why it may not open (nothing counted).

        ``FULL`` is worth an eviction and a second try; ``ADDRESS_FULL`` is not:
        that address already holds its share. ``over`` admits up to ``slack``
        beyond the limit, for a server whose eviction happens elsewhere.
        """
        with self._lock:
            if self._by_address[address] >= self.max_per_address:
                return ADDRESS_FULL
            if self._open >= self.max_connections + (self.slack if over else 0):
                return FULL
            self._by_address[address] += 1
            self._open += 1
            return None

    def release(self, address: str) -> None:
        with self._lock:
            self._open -= 1
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]

    @property
    def open(self) -> int:
        return self._open

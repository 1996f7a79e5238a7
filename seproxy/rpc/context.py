"""What all requests of one service share, built once at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from seproxy.cache import Cache
from seproxy.config import Settings
from seproxy.registry import Registry
from seproxy.rpc.executor import CallExecutor
from seproxy.security.tokens import TokenVerifier


class Resources(Protocol):
    """What a handler's ``initializeHandler`` builds for all its requests (a cache, connections).

    ``cache`` is what the metrics endpoint reports on (None for a service
    without one); ``close`` runs once when the service stops.
    """

    @property
    def cache(self) -> Cache | None: ...

    def close(self) -> None: ...


@dataclass
class ServiceContext:
    """What all requests of one service share, built once at start-up."""

    settings: Settings
    registry: Registry
    executor: CallExecutor
    url: str
    # The CA directory the service trusts; storage elements default to it too.
    ca_dir: Path
    started: float = field(default_factory=time.time)
    # Requests between prepare and finish; a graceful stop waits for zero.
    in_flight: int = 0
    # Checks bearer tokens; None when the config trusts no token issuer.
    tokens: TokenVerifier | None = None
    # What the handler's initializeHandler built; None before it ran, and for services that need nothing.
    shared: Resources | None = None
    # Re-reads the configuration (SIGHUP, refreshConfiguration): what it reloaded, or ConfigError.
    reload: Callable[[], str] | None = None

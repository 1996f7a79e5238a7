"""What every request of the StorageElementProxy shares, opened once at start-up and closed once at the end."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seproxy import metrics
from seproxy.cache import Cache
from seproxy.cache.configured import open_cache
from seproxy.config import Settings
from seproxy.http_side import HTTPSide
from seproxy.proxy.lfns import stage_for_url
from seproxy.proxy.staging import Stager
from seproxy.registry import Registry
from seproxy.storage.base import StorageElement
from seproxy.storage.factory import make_storage_element


@dataclass
class ProxyResources:
    """The cache, the storage elements, the staging policy over both, and the HTTP side server."""

    cache: Cache
    elements: dict[str, StorageElement]
    stager: Stager
    http: HTTPSide | None = None

    @classmethod
    def open(cls, settings: Settings, ca_dir: Path, service_host: str, registry: Callable[[], Registry]) -> ProxyResources:
        """Open everything the config names; the side server starts listening when enabled.

        ``registry`` gives the registry in force (it changes on reload): whose
        rights apply to a URL of another instance, staged here on demand.
        """
        cache = open_cache(settings)
        cache.on_count = metrics.count_cache_event
        elements = {
            name: make_storage_element(name, spec, default_ca_dir=ca_dir)
            for name, spec in settings.storage_elements.items()
        }
        stager = Stager(
            cache, elements, background=settings.cache.background_stagings, staging_limit=settings.service.call_timeout,
            revalidate_after=settings.cache.revalidate_after,
        )  # fmt: skip
        resources = cls(cache, elements, stager)
        if settings.http.enabled:
            http = resources.http = HTTPSide(settings, cache, service_host)
            http.serve_on_demand(functools.partial(stage_for_url, resources.stager, http, registry), settings.service.call_timeout)
            http.start()
        return resources

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        self.stager.close()
        self.cache.close()

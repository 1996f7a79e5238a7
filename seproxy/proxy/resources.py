"""What every request of the StorageElementProxy shares, opened once at start-up and closed once at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seproxy.cache import Cache
from seproxy.cache.configured import open_cache
from seproxy.config import Settings
from seproxy.http_side import HTTPSide
from seproxy.proxy.staging import Stager
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
    def open(cls, settings: Settings, ca_dir: Path, service_host: str) -> ProxyResources:
        """Open everything the config names; the side server starts listening when enabled."""
        cache = open_cache(settings)
        elements = {
            name: make_storage_element(name, spec, default_ca_dir=ca_dir)
            for name, spec in settings.storage_elements.items()
        }
        stager = Stager(
            cache, elements, background=settings.cache.background_stagings, staging_limit=settings.service.call_timeout
        )
        resources = cls(cache, elements, stager)
        if settings.http.enabled:
            resources.http = HTTPSide(settings, cache, service_host)
            resources.http.start()
        return resources

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        self.stager.close()
        self.cache.close()

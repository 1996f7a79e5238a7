"""Opening the staging cache as the config describes it (service and operator CLI alike)."""

from __future__ import annotations

from seproxy.cache import Cache
from seproxy.config import Settings


def open_cache(settings: Settings, *, read_only: bool = False) -> Cache:
    """The cache at ``settings.cache_root``; safe while another process (the service) has it open.

    ``read_only``: for looking only (no recovery, nothing created or changed)."""
    return Cache(
        settings.cache_root,
        quota=settings.cache.quota,
        high_watermark=settings.cache.high_watermark,
        low_watermark=settings.cache.low_watermark,
        min_free=settings.cache.min_free,
        upload_lifetime=settings.cache.upload_lifetime,
        read_only=read_only,
        upload_share=settings.cache.upload_share,
    )

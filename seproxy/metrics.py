"""Prometheus metrics: what an operator graphs and alerts on.

Counters and histograms are updated where things happen (RPC calls,
streams, stagings); cache totals are read from the cache index when
Prometheus scrapes, so they are right even after the operator CLI purged.
Label values come from fixed sets (exported method names, configured
storage elements), never from arbitrary wire input.

Worker processes (``service.workers``) write their values to files under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, set by
the supervisor before they start); the worker that serves the metrics port
adds them up: counters and histograms are summed, the transfers in progress
are summed over the workers alive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import prometheus_client
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from seproxy.cache import Cache
from seproxy.cache.traffic import HIT, STREAM_THROUGH

RPC_CALLS = prometheus_client.Counter(
    "seproxy_rpc_calls", "RPC calls by method and outcome (ok, error, refused: 4xx, failed: 5xx)", ["method", "outcome"]
)
RPC_DURATION = prometheus_client.Histogram(
    "seproxy_rpc_call_duration_seconds",
    "Time from request to answer, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BYTES_SENT = prometheus_client.Counter("seproxy_bytes_sent", "File bytes sent to clients", ["route"])
BYTES_RECEIVED = prometheus_client.Counter("seproxy_bytes_received", "File bytes received from clients", ["route"])
STAGINGS = prometheus_client.Counter("seproxy_stagings", "Downloads from storage elements into the cache", ["se", "outcome"])
SE_BYTES = prometheus_client.Counter(
    "seproxy_se_bytes",
    "File bytes by storage element: sent from the cache (hit), fetched into it (miss), sent while being staged (stream-through)",
    ["se", "kind"],
)
CACHE_EVICTIONS = prometheus_client.Counter("seproxy_cache_evictions", "Entries evicted from the cache")
CACHE_LOOKUPS = prometheus_client.Counter(
    "seproxy_cache_lookups", "Stagings answered from the cache (hit) or fetched (miss)", ["result"]
)
ACTIVE_TRANSFERS = prometheus_client.Gauge("seproxy_active_transfers", "Transfers in progress", ["kind"], multiprocess_mode="livesum")


def sent(route: str, count: int) -> None:
    """Count file bytes sent on ``route`` (by storage element: ``count_se_bytes``)."""
    BYTES_SENT.labels(route).inc(count)


def outcome_of(status: int, ok: bool) -> str:
    """501 (no such method) is the caller's mistake, like a 4xx; other 5xx are the service's."""
    if status >= 500 and status != 501:
        return "failed"
    if status >= 400:
        return "refused"
    return "ok" if ok else "error"


def count_cache_event(what: str, count: int) -> None:
    """What the cache tells its ``on_count``: evictions, and lookups by result."""
    if what == "evicted":
        CACHE_EVICTIONS.inc(count)
    else:
        CACHE_LOOKUPS.labels(what).inc(count)


def count_se_bytes(cache: Cache, se: str | None, kind: str, size: int) -> None:
    """Count ``size`` bytes of ``se``'s files, for Prometheus and for ``seproxy cache du``.

    ``se`` None: an upload's file, which came from no storage element and is not counted."""
    if se is None or size <= 0:
        return
    cache.traffic.add(se, kind, size)
    SE_BYTES.labels(se, kind).inc(size)


def count_served(cache: Cache, sent: Mapping[tuple[str | None, bool], int]) -> None:
    """Count the file bytes one answer sent, by (SE, whether the file was still being staged)."""
    for (se, growing), size in sent.items():
        count_se_bytes(cache, se, STREAM_THROUGH if growing else HIT, size)


class CacheCollector(Collector):
    """Cache usage and evictions, read at scrape time."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Any]:
        usage = self._cache.usage()
        by_area = GaugeMetricFamily("seproxy_cache_bytes", "Bytes in the cache by area", labels=["area"])
        for area, size in sorted(usage.by_area.items()):
            by_area.add_metric([area], size)
        yield by_area
        yield GaugeMetricFamily("seproxy_cache_entries", "Entries in the cache", value=usage.count)
        yield GaugeMetricFamily("seproxy_cache_quota_bytes", "Cache quota", value=usage.quota)
        yield GaugeMetricFamily("seproxy_cache_disk_free_bytes", "Free space on the cache's file system", value=usage.disk_free)


def _registry() -> prometheus_client.CollectorRegistry:
    """What ``/metrics`` shows: this process's metrics, or with worker processes those of all of them."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return prometheus_client.REGISTRY
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    return registry


class MetricsEndpoint:
    """The ``/metrics`` HTTP server of one service, with its cache collector."""

    def __init__(self, host: str, port: int, cache: Cache | None) -> None:
        self._registry = _registry()
        self._collector = CacheCollector(cache) if cache is not None else None
        if self._collector is not None:
            self._registry.register(self._collector)
        self._server, self._thread = prometheus_client.start_http_server(port, addr=host, registry=self._registry)
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._collector is not None:
            self._registry.unregister(self._collector)

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
from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from seproxy.cache import Cache

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
# The part of seproxy_bytes_sent that left while its staging was still in progress (stream-through):
# what a reader got without waiting for the whole file.
STREAM_THROUGH = prometheus_client.Counter(
    "seproxy_bytes_stream_through", "File bytes sent to clients while their staging was in progress", ["route", "se"]
)
ACTIVE_TRANSFERS = prometheus_client.Gauge("seproxy_active_transfers", "Transfers in progress", ["kind"], multiprocess_mode="livesum")


def sent(route: str, count: int, *, staging_se: str | None = None) -> None:
    """Count file bytes sent on ``route``; ``staging_se``: they were read from a file still being
    staged from that element (stream-through), not from a complete cache entry."""
    BYTES_SENT.labels(route).inc(count)
    if staging_se is not None:
        STREAM_THROUGH.labels(route, staging_se).inc(count)


def outcome_of(status: int, ok: bool) -> str:
    """501 (no such method) is the caller's mistake, like a 4xx; other 5xx are the service's."""
    if status >= 500 and status != 501:
        return "failed"
    if status >= 400:
        return "refused"
    return "ok" if ok else "error"


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
        yield CounterMetricFamily("seproxy_cache_evictions", "Entries evicted by this process", value=self._cache.evictions)
        lookups = CounterMetricFamily(
            "seproxy_cache_lookups", "Stagings by this process answered from the cache (hit) or fetched (miss)",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self._cache.hits)
        lookups.add_metric(["miss"], self._cache.misses)
        yield lookups


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

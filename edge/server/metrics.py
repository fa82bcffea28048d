"""Prometheus metrics of one daemon, in a registry of its own (two apps in one process never clash).

Collection ids can name a site or a customer, so face counts are labelled by collection only when
`server.metrics_collection_names` says so; by default they are totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.store import CollectionNotFound, Store

#: Request latency: tens of ms (list calls) to seconds (a queued image on a small board).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Pipeline stages: a landmark pass is ~1 ms, an embedding on a slow CPU ~100 ms.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Requests, errors and latency per operation; pipeline stage times; faces; refused logins and connections."""

    def __init__(self, *, collection_names: bool = False) -> None:
        self._collection_names = collection_names
        self.registry = CollectorRegistry()
        self.requests = Counter("edge_face_requests", "Requests by operation", ["operation"],
                                registry=self.registry)
        self.errors = Counter("edge_face_errors", "Error responses by operation and error code",
                              ["operation", "code"], registry=self.registry)
        self.latency = Histogram("edge_face_request_duration_seconds", "Request latency by operation",
                                 ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("edge_face_pipeline_stage_duration_seconds", "Face pipeline time per stage",
                                ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.admitted = Gauge("edge_face_inference_admitted", "Image requests running or waiting in the pool",
                              registry=self.registry)
        self.auth_failures = Counter("edge_face_auth_failures", "Requests refused by authentication or scope",
                                     ["code"], registry=self.registry)
        self.connections = Gauge("edge_face_connections", "Open client connections", registry=self.registry)
        self.connections_closed = Counter(
            "edge_face_connections_closed", "Connections the daemon closed or refused, by reason", ["reason"],
            registry=self.registry)
        self.accept_failures = Counter("edge_face_accept_failures", "accept() failures (out of files)",
                                       registry=self.registry)

    def observe_stages(self, timings: dict[str, float]) -> None:
        """Record one analysis; stages that did not run (0 s) are not observations."""
        for stage, seconds in timings.items():
            if seconds > 0:
                self.stages.labels(stage).observe(seconds)

    def watch(self, store: Store, admitted: Callable[[], float]) -> None:
        """Read the store's face counts and the pool's load at each scrape."""
        self.admitted.set_function(admitted)
        self.registry.register(_Faces(store, self._collection_names))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Faces(Collector):
    """Gauges computed at scrape time, so they are never stale and cost nothing between scrapes."""

    def __init__(self, store: Store, collection_names: bool) -> None:
        self._store = store
        self._collection_names = collection_names

    def collect(self) -> Iterator[Metric]:
        counts: dict[str, int] = {}
        after: str | None = None
        while True:
            records, after = self._store.list_collections(after=after)
            for record in records:
                try:
                    counts[record.collection_id] = self._store.face_count(record.collection_id)
                except CollectionNotFound:  # deleted since it was listed
                    continue
            if after is None:
                break
        yield GaugeMetricFamily("edge_face_collections", "Collections", value=len(counts))
        yield GaugeMetricFamily("edge_face_faces", "Faces indexed in all collections", value=sum(counts.values()))
        if self._collection_names:
            per = GaugeMetricFamily("edge_face_collection_faces", "Faces indexed per collection",
                                    labels=["collection"])
            for collection, count in counts.items():
                per.add_metric([collection], count)
            yield per
        health = self._store.health()
        yield GaugeMetricFamily("edge_face_store_writable", "1 while the store can take writes",
                                value=int(health.writable))
        yield GaugeMetricFamily("edge_face_store_free_bytes", "Free space on the state directory's disk",
                                value=health.free_bytes)
        yield GaugeMetricFamily("edge_face_erasure_pending", "1 while deletions are not yet scrubbed from disk",
                                value=int(health.erasure_pending))

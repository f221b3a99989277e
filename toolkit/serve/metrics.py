"""Prometheus metrics in a registry of the app's own (two apps in one process never share counters)."""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

class _CounterFrom:
    """A counter whose value lives elsewhere (read at scrape time): `name`_total."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]):
        self.name, self.documentation, self.value = name, documentation, value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=float(self.value()))


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts and latencies per route, model batch sizes and durations, queue depth, readiness."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("clipkit_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("clipkit_http_request_duration_seconds", "HTTP request latency in seconds",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("clipkit_batch_size_images", "Images per model call",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("clipkit_batch_duration_seconds", "Seconds per model call",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("clipkit_images", "Images encoded", registry=r)
        self.queue_depth = Gauge("clipkit_queue_depth_images", "Images accepted and waiting for the model",
                                 registry=r)
        self.in_flight = Gauge("clipkit_in_flight_requests", "API requests being handled", registry=r)
        self.ready = Gauge("clipkit_ready", "1 when the model is loaded and the service is not shutting down",
                           registry=r)
        self._cancelled: Callable[[], float] = lambda: 0.0
        r.register(_CounterFrom("clipkit_images_cancelled", "Images dropped before the model because their request "
                                "was cancelled (deadline or client gone)", lambda: self._cancelled()))

    def observe_batch(self, n_images: int, seconds: float) -> None:
        self.batch_size.observe(n_images)
        self.batch_seconds.observe(seconds)
        self.images.inc(n_images)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def track(self, depth: Callable[[], float], in_flight: Callable[[], float], ready: Callable[[], float]) -> None:
        """Gauges read at scrape time."""
        self.queue_depth.set_function(depth)
        self.in_flight.set_function(in_flight)
        self.ready.set_function(ready)

    def track_cancelled(self, cancelled: Callable[[], float]) -> None:
        """The batcher's count of images it dropped uncomputed, read at scrape time."""
        self._cancelled = cancelled

    def track_text(self, encoded: Callable[[], float], refused: Callable[[], float],
                   queued: Callable[[], float]) -> None:
        """The text lane's counts (serve/text.py), read at scrape time."""
        r = self.registry
        r.register(_CounterFrom("clipkit_text_label_sets_encoded", "Request label sets encoded (a cached or "
                                "shared one is not encoded again)", encoded))
        r.register(_CounterFrom("clipkit_text_label_sets_refused", "Request label sets refused (503) because the "
                                "text queue was full", refused))
        Gauge("clipkit_text_queue_labels", "Labels of request label sets waiting for, or in, a text pass",
              registry=r).set_function(queued)

    def render(self) -> bytes:
        return generate_latest(self.registry)

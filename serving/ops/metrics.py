"""Prometheus metrics, per app (no global registry), and the middleware that records requests.

Requests are labelled by model, version, endpoint (the route template, never the raw path, so
a scan of random URLs cannot blow up the label count) and status. Counters, gauges and the
exposition are prometheus_client's; histograms, and the sharing of values between worker
processes, are serving/ops/cheap_metrics.py's (why: its docstring).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.core.batching import BatchObserver
from serving.ops.cheap_metrics import Histogram, SharedMetrics

log = logging.getLogger("serving")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384, 65536)
GAUGES_ACROSS_PROCESSES = {
    "serving_requests_in_flight": "livesum",
    "serving_model_load_duration_seconds": "livemax",
}
"""How a gauge adds up over worker processes (live ones only), in prometheus_client's words."""


class Metrics:
    def __init__(self, shared: SharedMetrics | None = None) -> None:
        self.shared = shared
        """Where this process shares its values with the server's other workers (None: alone)."""
        self._writing = threading.Lock()
        """One write of this process's files at a time (a periodic flush and a scrape's, or
        the flush at stop, must not cross)."""
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, str, int], Any] = {}
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter(
            "serving_requests",
            "HTTP requests",
            ["model", "version", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "serving_request_duration_seconds",
            "Time to answer a request, end to end",
            ["model", "version", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "serving_inference_duration_seconds",
            "Time in onnxruntime session.run",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Histogram(
            "serving_request_rows",
            "Rows (batch size) per inference request",
            ["model", "version"],
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "serving_batch_rows",
            "Rows per merged run of the adaptive batcher",
            ["model", "version"],
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "serving_batch_requests",
            "Requests per merged run of the adaptive batcher",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_seconds = Histogram(
            "serving_queue_duration_seconds",
            "Time a request waited in the adaptive batcher's queue",
            ["model", "version"],
            buckets=(0.00005, 0.0001, 0.00025, *LATENCY_BUCKETS),
            registry=r,
        )
        self.answering = 0
        """Requests being answered, counted on the event loop (a plain int: the gauge's own
        locked increments cost more per request); read when metrics are scraped."""
        self.in_flight = Gauge("serving_requests_in_flight", "Requests being answered", registry=r)
        self.in_flight.set_function(lambda: self.answering)
        self.load_seconds = Gauge(
            "serving_model_load_duration_seconds",
            "Time to load, verify and warm up a model version",
            ["model", "version"],
            registry=r,
        )

    def observe_inference(self, model: str, version: int, seconds: float) -> None:
        """One `session.run` (a request's rows, or a merged batch's)."""
        self._child(self.inference_seconds, model, version).observe(seconds)

    def observe_request_rows(self, model: str, version: int, rows: int) -> None:
        self._child(self.rows, model, version).observe(rows)

    def batch_observer(self, model: str, version: int) -> BatchObserver:
        """Where one model version's batcher reports each merged run and each request's wait,
        with the label look-ups done once here (three observations per request)."""
        rows = self._child(self.batch_rows, model, version)
        requests = self._child(self.batch_requests, model, version)

        def batch(n_rows: int, n_requests: int) -> None:
            rows.observe(n_rows)
            requests.observe(n_requests)

        return BatchObserver(
            batch=batch, queued=self._child(self.queue_seconds, model, version).observe
        )

    def observe_request(
        self, model: str, version: str, endpoint: str, status: int, seconds: float
    ) -> None:
        key = (model, version, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(model, version, endpoint, str(status)),
                self.request_seconds.labels(model, version, endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)

    def _child(self, metric: Histogram, model: str, version: int) -> Any:
        """`metric.labels(model, str(version))`, cached: the look-up (and even
        `str(version)`) costs more per call than the observation. Label values are bounded
        (models and versions)."""
        key = (id(metric), model, version)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(model, str(version))
        return child

    def model_loaded(self, model: str, version: int, seconds: float) -> None:
        self.load_seconds.labels(model, str(version)).set(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text: this process's values, or every worker's if shared (this
        one's written first: a value one worker shows is on disk for the next scrape,
        whichever worker answers that one, so totals never go back)."""
        if self.shared is None:
            return bytes(generate_latest(self.registry))
        try:
            self.flush()
        except OSError as e:
            log.warning("could not share this worker's metrics: %s", e)
        return bytes(generate_latest(self.shared.registry))

    def flush(self) -> None:
        """Write this process's values for the other workers' scrapes (when shared)."""
        with self._writing:
            if self.shared is not None:
                self.shared.write(self.registry, GAUGES_ACROSS_PROCESSES)

    async def share(self, every_s: float) -> None:
        """Flush every `every_s` until cancelled, then once more (the lifespan runs it)."""
        try:
            while True:
                await self._flush_in_thread()
                await asyncio.sleep(every_s)
        finally:
            await self._flush_in_thread()

    async def _flush_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self.flush)  # a file write: not on the event loop
        except OSError as e:
            log.warning("could not share this worker's metrics: %s", e)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.answering += 1
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.answering -= 1
            model, version, endpoint = labels(scope)
            self.metrics.observe_request(
                model, version, endpoint, status, time.perf_counter() - start
            )


def labels(scope: Scope) -> tuple[str, str, str]:
    """Model and version only once a route resolved them (`note_model`): an unknown name in a
    URL must not become a label value."""
    route: Any = scope.get("route")
    endpoint = getattr(route, "path", None) or "unmatched"
    state = scope.get("state") or {}
    return state.get("model_name", ""), state.get("model_version", ""), endpoint


def note_model(state: Any, name: str, version: int) -> None:
    """Record on the request state which model answered, for the request metrics."""
    state.model_name = name
    state.model_version = str(version)

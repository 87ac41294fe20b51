"""What the service tells its operator: one log line per request (method, path, status, items, ms) through
the `logging` module - never a product's text - and Prometheus metrics at /metrics: requests by route and
status, a latency histogram, products predicted and products flagged for review (their ratio is the share
flagged). With several workers (`serve.workers` > 1) the counts of every worker are summed through
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `./run.sh serve`)."""
from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("prodcat.serve")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per application)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("prodcat_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("prodcat_request_seconds", "time to answer a request", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.items = Counter("prodcat_products_predicted", "products predicted", registry=r)
        self.flagged = Counter("prodcat_products_flagged", "products predicted and flagged needs_review "
                               "(share flagged: prodcat_products_flagged_total / prodcat_products_predicted_total)",
                               registry=r)
        self.loads = Counter("prodcat_model_loads", "models folder loads (start-up and reloads) by outcome",
                             ["outcome"], registry=r)

    def predicted(self, items: int, flagged: int) -> None:
        self.items.inc(items)
        self.flagged.inc(flagged)

    def render(self) -> tuple[bytes, str]:
        """(the metrics in Prometheus' text format, its content type): this process's, or with several
        workers every worker's, summed."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestLog:
    """Pure ASGI middleware: times each HTTP request, logs one line and counts it in the metrics. The
    products in a request are counted by the endpoint (`request.state.items`)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            items = (scope.get("state") or {}).get("items", 0)
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            log.info("%s %s %d items=%d %.1fms", scope["method"], scope["path"][:200], status[0], items,
                     seconds * 1000)

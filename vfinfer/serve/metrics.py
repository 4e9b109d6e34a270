"""Prometheus metrics of one server (its own registry, so several apps in one process, as in
the tests, do not share counters), and the ASGI middleware that counts every request."""

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
KNOWN_PATHS = ("/v1/cells", "/v1/cells:batch", "/v1/metaphase", "/v1/health/live",
               "/v1/health/ready", "/v1/models", "/metrics", "/openapi.json", "/docs",
               "/v2/health/live", "/v2/health/ready")


class Metrics:
    def __init__(self, queue_depth):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("vfinfer_requests", "HTTP requests by path and status",
                                ["path", "status"], registry=registry)
        self.latency = Histogram("vfinfer_request_seconds", "Request latency by path",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter("vfinfer_errors", "Refused or failed requests by error code",
                              ["code"], registry=registry)
        self.cells = Counter("vfinfer_cells", "Cells classified", registry=registry)
        self.disconnects = Counter("vfinfer_client_disconnects",
                                   "Requests whose client hung up before the answer",
                                   registry=registry)
        self.batch_cells = Histogram("vfinfer_batch_cells", "Cells per engine run",
                                     buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=registry)
        self.batch_seconds = Histogram("vfinfer_batch_seconds", "Seconds per engine run",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        depth = Gauge("vfinfer_queue_depth", "Cells waiting for the engines", registry=registry)
        depth.set_function(queue_depth)

    def on_batch(self, n_cells, _n_chromosomes, seconds):
        self.cells.inc(n_cells)
        self.batch_cells.observe(n_cells)
        self.batch_seconds.observe(seconds)

    def exposition(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountRequests:
    """Pure ASGI middleware: status and latency of every HTTP request, refusals included."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = path_label(scope.get("path", ""))
        started, status = time.perf_counter(), [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


def path_label(path):
    """The ``path`` label of a request: a known path, an Open Inference Protocol route with
    the model's name left out, or "other"."""
    if path in KNOWN_PATHS:
        return path
    if path == "/v2":
        return path
    if path.startswith("/v2/models/"):
        suffix = path.rsplit("/", 1)[-1]
        return "/v2/models/{name}/" + suffix if suffix in ("infer", "ready") \
            else "/v2/models/{name}"
    return "other"

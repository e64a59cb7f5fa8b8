"""Service metrics in the Prometheus format (``GET /metrics``), and the per-request middleware.

The metrics live in one registry per app (``prometheus_client``), so two apps in one process never
mix their counts:

- ``mmva_http_requests_total{method,route,status}`` and ``mmva_http_request_duration_seconds{method,route}``
  (histogram): every HTTP request, labelled by its route template (``/jobs/{job_id}``, never the raw
  path, so the label set stays small; ``unmatched`` for a path no route serves);
- ``mmva_analysis_seconds_per_media_second`` (histogram) and ``mmva_media_seconds_total``: how fast
  media are analysed (below 1: faster than real time);
- ``mmva_jobs_queued``, ``mmva_jobs_running``, ``mmva_jobs_workers`` (gauges, read when scraped);
  ``mmva_jobs_refused_total{kind}`` (media requests refused because every worker and queue slot was
  taken: ``job`` 429, ``sync`` 503; ``text`` 503 for text requests); ``mmva_jobs_finished_total{state}``;
- ``mmva_text_requests_running``, ``mmva_model_ready``, ``mmva_model_load_seconds``;
- ``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ... (prometheus_client's process
  collector) and ``python_info``.

Example::

    metrics = ServiceMetrics()
    app.add_middleware(RequestObserver, metrics=metrics)
    metrics.render()  # (body, content type) for GET /metrics
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily

from mmva.serve.logs import REQUEST_ID_HEADER, new_request_id, reset_request_id, set_request_id

access_log = logging.getLogger("mmva.serve.access")

# Requests range from a /ping (ms) to a synchronous analysis (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REALTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class _Live:
    """Gauges read from the service at scrape time (queue depth, running jobs), never stale."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Any:
        values = self.read()
        for name, doc in (("mmva_jobs_queued", "Jobs waiting for a worker (queue depth)."),
                          ("mmva_jobs_running", "Jobs (and synchronous media requests) being analysed."),
                          ("mmva_jobs_workers", "Analysis worker threads."),
                          ("mmva_text_requests_running", "Text requests the model is working on."),
                          ("mmva_model_ready", "1 once the model is loaded, else 0.")):
            yield GaugeMetricFamily(name, doc, value=float(values.get(name, 0.0)))


class ServiceMetrics:
    """The service's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter("mmva_http_requests", "HTTP requests answered, by route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("mmva_http_request_duration_seconds",
                                 "Time from a request's arrival to the end of its answer.", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.realtime = Histogram("mmva_analysis_seconds_per_media_second",
                                  "Analysis time divided by the media's duration, per analysed file.",
                                  buckets=REALTIME_BUCKETS, registry=self.registry)
        self.media_seconds = Counter("mmva_media_seconds", "Seconds of media analysed.", registry=self.registry)
        self.refused = Counter("mmva_jobs_refused", "Requests refused because the workers and queue were full "
                               "(job: POST /jobs 429, sync: POST /invocations 503, text: text request 503).",
                               ["kind"], registry=self.registry)
        self.finished = Counter("mmva_jobs_finished", "Jobs and synchronous media requests that ended, by state.",
                                ["state"], registry=self.registry)
        self.model_load = Gauge("mmva_model_load_seconds", "Seconds the model took to load at start-up.",
                                registry=self.registry)
        for kind in ("job", "sync", "text"):
            self.refused.labels(kind=kind)  # exported at 0 from the start, so rate() sees the first one
        for state in ("done", "failed", "cancelled"):
            self.finished.labels(state=state)

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        """Export the gauges ``read()`` returns (``mmva_jobs_queued``, ...) at every scrape."""
        self.registry.register(_Live(read))

    def analysed(self, seconds: float, media_seconds: float) -> None:
        """Record one analysed file: its wall time and its duration."""
        if media_seconds > 0:
            self.realtime.observe(seconds / media_seconds)
            self.media_seconds.inc(media_seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(scope: dict) -> str:
    """The route template the router matched (``/jobs/{job_id}``), or ``unmatched``."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestObserver:
    """ASGI middleware: a request id (echoed in ``X-Request-ID``), the request metrics, one JSON log line.

    It sits outside every other middleware, so refusals (a foreign Host, a cross-site post) are counted
    and logged like the rest.
    """

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        offered = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = new_request_id(offered)
        token = set_request_id(request_id)
        started = time.perf_counter()
        status = 500  # what the server answers if the app fails before it starts a response

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route, method = route_label(scope), scope["method"]
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(elapsed)
            access_log.info("%s %s %d %.1f ms", method, scope["path"], status, elapsed * 1000,
                            extra={"event": "request", "request_id": request_id, "method": method,
                                   "path": scope["path"], "route": route, "status": status,
                                   "duration_ms": round(elapsed * 1000, 2),
                                   "client": (scope.get("client") or ("", 0))[0]})
            reset_request_id(token)

"""Prometheus metrics of one service, in a registry of its own: the client's global registry would refuse a
second app's metrics of the same names (two apps in one test process, or an app made twice)."""
from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: a batch of tiny images on a GPU answers in a few ms; ResNet-50 on a busy CPU core takes seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, and `max_batch` itself: a full batch is its own bucket."""
    return tuple(sorted({*(2**i for i in range(max_batch.bit_length()) if 2**i < max_batch), max_batch}))


class ServeMetrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("resnets_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("resnets_request_latency_seconds", "time from request to the end of the answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("resnets_batch_size", "images in each forward pass of the model",
                                    buckets=batch_buckets(max_batch), registry=self.registry)
        self.images = Counter("resnets_images", "images classified", registry=self.registry)
        self.errors = Counter("resnets_errors", "requests refused or failed, by reason", ["reason"],
                              registry=self.registry)
        self.queue_depth = Gauge("resnets_queue_depth", "images waiting for a batch", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: count every HTTP answer by route and status, and time it. The route is the path
    template the router matched (`/predict`), or "other" for paths no route has: a scanner probing a
    thousand URLs must not make a thousand series."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # 500 unless an answer starts: the app raised

        async def send_noting_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "other")  # the router sets scope["route"] on a match
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

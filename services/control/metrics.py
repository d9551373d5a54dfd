"""Prometheus metrics: HTTP latency from a middleware, and gauges read from Redis when scraped
(jobs by state, crawl queue depth, crawler ranks logged in), so every control replica reports
the same truth without keeping counters of its own."""
from __future__ import annotations

import time

import redis as redis_lib
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.routing import Match

from shared.jobs import STATES, JobStore
from services.control.crawler_pool import crawl_queue_depth_sync, login_states_sync


class RedisStateCollector:
    def __init__(self, client: redis_lib.Redis):
        self.client = client
        self.store = JobStore(client)

    def collect(self):
        jobs = GaugeMetricFamily("cnclip_jobs", "Jobs by state", labels=["state"])
        queue = GaugeMetricFamily("cnclip_crawl_queue_depth", "Crawl requests waiting in the broker queue")
        ranks = GaugeMetricFamily("cnclip_crawler_ranks", "Crawler ranks by login state", labels=["state"])
        logged_in = GaugeMetricFamily("cnclip_crawler_ranks_logged_in", "Crawler ranks logged in")
        up = GaugeMetricFamily("cnclip_redis_up", "Whether Redis answered this scrape")
        try:
            counts = self.store.counts()
            depth = crawl_queue_depth_sync(self.client)
            states = login_states_sync(self.client)
        except redis_lib.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        queue.add_metric([], depth)
        by_state: dict[str, int] = {}
        for state in states:
            by_state[state.state] = by_state.get(state.state, 0) + 1
        for state, n in sorted(by_state.items()):
            ranks.add_metric([state], n)
        logged_in.add_metric([], by_state.get("logged_in", 0))
        yield from (jobs, queue, ranks, logged_in, up)


class Metrics:
    def __init__(self, client: redis_lib.Redis):
        self.registry = CollectorRegistry()
        self.http_latency = Histogram(
            "cnclip_http_request_duration_seconds", "HTTP request latency",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.registry.register(RedisStateCollector(client))


def route_template(app, scope) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    for candidate in getattr(app, "routes", []):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return getattr(candidate, "path", "other")
    return "unmatched"  # unknown paths share one label: no label per random URL


class LatencyMiddleware:
    """Times each HTTP request until its response starts (streams are timed to first byte)."""

    def __init__(self, app, metrics: Metrics, router_app):
        self.app = app
        self.metrics = metrics
        self.router_app = router_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500, "seen": False}

        async def timed_send(message):
            if message["type"] == "http.response.start" and not status["seen"]:
                status["code"], status["seen"] = message["status"], True
                self.metrics.http_latency.labels(
                    scope["method"], route_template(self.router_app, scope),
                    str(status["code"])).observe(time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, timed_send)

"""Prometheus metrics: what this process did (counters, histograms) and what the database holds.

Process metrics are observed where the work happens (`observe_*` below) and live in this
process's default registry. Counts of tasks and deliveries are read from the database at
scrape time, so they are right however many gateway and worker processes share it.
"""

from __future__ import annotations

import functools
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func
from sqlmodel import select

from gateway.db import Database
from gateway.models import Delivery, DeliveryStatus, Task, TaskStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SECONDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)

JOB_SECONDS = Histogram("tgw_job_duration_seconds", "Wall time from a task's first claim to its stored result.",
                        ["provider", "outcome"], buckets=_SECONDS)
AUDIO_SECONDS = Histogram("tgw_job_audio_seconds", "Duration of the audio of each completed task.",
                          ["provider"], buckets=_SECONDS)
REALTIME_FACTOR = Histogram("tgw_job_realtime_factor",
                            "Audio seconds per second of processing, per completed task (higher is faster).",
                            ["provider"], buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200))
INGESTED = Counter("tgw_ingested_total", "Results that entered through the idempotent door, by outcome.",
                   ["provider", "outcome"])
CALLBACKS_REFUSED = Counter("tgw_callbacks_refused_total",
                            "Callbacks refused at the door, nothing stored: bad_signature, invalid, "
                            "unknown_task, busy (too many bodies being received).", ["provider", "reason"])
DELIVERY_ATTEMPTS = Counter("tgw_delivery_attempts_total", "Delivery attempts, by target kind and outcome.",
                            ["kind", "outcome"])
RETENTION_DELETED = Counter("tgw_retention_deleted_total",
                            "What the retention sweep deleted: transcript (a task, as DELETE does), audio (an asset).",
                            ["kind"])
HTTP_REQUESTS = Counter("tgw_http_requests_total", "HTTP requests answered, by route and status.",
                        ["method", "route", "status"])
CONNECTIONS_REFUSED = Counter("tgw_connections_refused_total",
                              "Connections closed at once because server.max_connections were open.")
HTTP_SECONDS = Histogram("tgw_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
                         ["method", "route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))


@functools.lru_cache(maxsize=4096)
def _child(metric, *labels: str):
    """metric.labels(*labels), looked up once (labels() validates and locks on every call)."""
    return metric.labels(*labels)


def observe_result(provider: str, started_at: datetime | None, finished_at: datetime, success: bool,
                   audio_s: float) -> None:
    """A result was stored for a task of `provider` (called by ingest, in whichever process stores it)."""
    _child(INGESTED, provider, "accepted").inc()
    if started_at is None:
        return
    seconds = max((finished_at - started_at).total_seconds(), 0.0)
    _child(JOB_SECONDS, provider, "completed" if success else "failed").observe(seconds)
    if success and audio_s > 0:
        _child(AUDIO_SECONDS, provider).observe(audio_s)
        if seconds > 0:
            _child(REALTIME_FACTOR, provider).observe(audio_s / seconds)


def observe_repeat(provider: str, outcome_name: str) -> None:
    """A result was refused or acknowledged without being stored (duplicate, conflict, unknown task)."""
    _child(INGESTED, provider, outcome_name).inc()


def observe_refused_callback(provider: str, reason: str) -> None:
    _child(CALLBACKS_REFUSED, provider, reason).inc()


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_SECONDS, method, route).observe(seconds)


async def database_gauges(db: Database) -> CollectorRegistry:
    """Tasks by status and provider, queue depth, deliveries by kind and status: read now."""
    async with db.session() as s:
        tasks = (await s.exec(select(Task.status, Task.provider, func.count())
                              .group_by(Task.status, Task.provider))).all()
        deliveries = (await s.exec(select(Delivery.kind, Delivery.status, func.count())
                                   .group_by(Delivery.kind, Delivery.status))).all()
    by_task = GaugeMetricFamily("tgw_tasks", "Tasks in the database, by status and provider.",
                                labels=["status", "provider"])
    queued = GaugeMetricFamily("tgw_queue_depth", "Tasks waiting for a worker (status queued).")
    seen = {(status, provider): n for status, provider, n in tasks}
    providers = sorted({p for _, p in seen}) or ["local"]
    for status in TaskStatus.ALL:
        for provider in providers:
            by_task.add_metric([status, provider], seen.get((status, provider), 0))
    queued.add_metric([], sum(n for (status, _), n in seen.items() if status == TaskStatus.QUEUED))
    by_delivery = GaugeMetricFamily("tgw_deliveries", "Deliveries in the database, by target kind and status.",
                                    labels=["kind", "status"])
    counted = {(kind, status): n for kind, status, n in deliveries}
    for kind in sorted({k for k, _ in counted} | {"webhook", "plugin"}):
        for status in DeliveryStatus.ALL:
            by_delivery.add_metric([kind, status], counted.get((kind, status), 0))

    registry = CollectorRegistry()
    registry.register(_Fixed([by_task, queued, by_delivery]))
    return registry


class _Fixed:
    """A collector that returns metric families computed beforehand."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


async def exposition(db: Database) -> bytes:
    """The text of GET /metrics: this process's metrics, then the database's counts."""
    return generate_latest(REGISTRY) + generate_latest(await database_gauges(db))

"""Prometheus metrics at `/metrics`: job gauges and duration histograms read from the database at scrape time
(so every API replica reports the same numbers, whichever process ran the jobs), and this process's HTTP
request latency. Only aggregates are exposed: no job ids, user names or models."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from service.db.models import Job, JobKind, JobState
from service.db.session import Database
from service.lifecycle import is_parent

# jobs run from seconds (tiny models) to hours (7B+ on CPU)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, float("inf"))
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
FINISHED = (JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value)

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def _histogram(
    name: str, doc: str, labels: list[str], samples: dict[tuple[str, ...], list[float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, values in sorted(samples.items()):
        buckets = [(_bound(b), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS]
        family.add_metric(list(key), buckets, sum(values))
    return family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(float(bound))


def stage_method(job_method: str | None, stage: str) -> tuple[str, str]:
    """(method, stage) of a stage timing: a sweep's run stages are `method@sparsity/stage`."""
    run, sep, sub = stage.partition("/")
    if sep and "@" in run:
        return run.split("@", 1)[0], sub
    return job_method or JobKind.sweep.value, stage


class JobCollector:
    """Reads the jobs table on every scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: registering must not touch the database

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as session:
            by_state = session.execute(select(Job.state, Job.kind, func.count()).group_by(Job.state, Job.kind)).all()
            # a sweep with cells waits for them, not for a worker: its cells are the queue
            waiting = session.scalar(
                select(func.count()).select_from(Job).where(Job.state == JobState.queued.value, ~is_parent())
            )
            outbox = session.scalar(
                select(func.count()).where(Job.state == JobState.queued.value, Job.dispatched.is_(False))
            )
            heartbeats = session.execute(
                select(Job.worker_id, func.max(Job.updated_at), func.count())
                .where(Job.state == JobState.running.value)
                .group_by(Job.worker_id)
            ).all()
            finished = session.execute(
                select(Job.kind, Job.method, Job.state, Job.started_at, Job.finished_at, Job.stage_timings,
                       is_parent()).where(Job.state.in_(FINISHED))
            ).all()

        jobs = GaugeMetricFamily("twossp_jobs", "Jobs by state and kind", labels=["state", "kind"])
        counts = {(s.value, k.value): 0 for s in JobState for k in JobKind}
        for state, kind, count in by_state:
            counts[(state, kind)] = count
        for (state, kind), count in sorted(counts.items()):
            jobs.add_metric([state, kind], count)
        yield jobs
        yield GaugeMetricFamily("twossp_queue_depth", "Jobs waiting for a worker (state queued; a sweep's cells, not "
                                "the sweep)", value=waiting or 0)
        yield GaugeMetricFamily(
            "twossp_outbox_pending", "Queued jobs not yet accepted by the broker (the outbox)", value=outbox or 0
        )

        beat = GaugeMetricFamily(
            "twossp_worker_last_heartbeat_timestamp_seconds",
            "Last lease renewal by each worker holding a running job (unix time)",
            labels=["worker"],
        )
        running = GaugeMetricFamily("twossp_worker_running_jobs", "Running jobs per worker", labels=["worker"])
        for worker, last, count in heartbeats:
            name = worker or "unknown"
            if last is not None:
                beat.add_metric([name], last.timestamp())
            running.add_metric([name], count)
        yield beat
        yield running

        job_s: dict[tuple[str, ...], list[float]] = defaultdict(list)
        stage_s: dict[tuple[str, ...], list[float]] = defaultdict(list)
        for kind, method, state, started, ended, timings, parent in finished:
            label = method or kind
            seconds = _seconds(started, ended)
            if seconds is not None:
                job_s[(label, state)].append(seconds)
            if parent:  # a sweep's timings sum its cells', which count themselves
                continue
            for stage, value in (timings or {}).items():
                if isinstance(value, int | float):
                    stage_s[stage_method(method, stage)].append(float(value))
        yield _histogram(
            "twossp_job_duration_seconds", "Run time of finished jobs (start to finish) by method and final state",
            ["method", "state"], job_s,
        )
        yield _histogram(
            "twossp_stage_duration_seconds", "Time spent in each pipeline stage of finished jobs, by method",
            ["method", "stage"], stage_s,
        )


# label values come from closed sets, so made-up methods, paths or statuses cannot grow the series without bound
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
UNMATCHED = "unmatched"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER


def route_label(scope: dict[str, Any]) -> str:
    """The route template that answered (`/jobs/{job_id}`), never the request's own path; `unmatched` for none."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def status_label(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


class RequestLatency:
    """ASGI middleware: HTTP request latency by method, route template and status class."""

    def __init__(self, app: Any, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.histogram.labels(method_label(scope["method"]), route_label(scope), status_label(status)).observe(
                time.perf_counter() - start
            )


def install_metrics(app: Any, db: Database) -> None:
    """A registry per app (so several apps in one process do not collide), `/metrics`, and the latency
    middleware."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(db))  # type: ignore[arg-type]
    latency = Histogram(
        "twossp_http_request_duration_seconds", "HTTP request latency by method, route template and status class",
        ["method", "route", "status"], buckets=HTTP_BUCKETS, registry=registry,
    )
    app.state.metrics = registry
    app.include_router(router)
    app.add_middleware(RequestLatency, histogram=latency)

"""Response bodies of the HTTP API (request bodies: `twossp_core.plan.spec.PruneSpec` or `SweepSpec`, see routes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.db.models import EventKind, Job, JobEvent, JobKind, JobState

JOB_FIELDS_DOC = (
    "set once the job succeeded. prune: the CLI's report.json. sweep: the comparison, "
    "{rows (comparison.json: one row per method and target sparsity), dense, data, timings, runtime, cells}. "
    "cell: the run's report.json plus `sweep` (the dense measurements, data, setup timings and runtime of the cell)"
)


class SweepCell(BaseModel):
    id: str = Field(description="the cell's job (GET /jobs/{id}: its state, events, artifact)")
    name: str = Field(description="`<method>-<sparsity>` (`<model>/<method>-<sparsity>` in a sweep over several "
                      "models), the cell's folder under runs/ in the comparison")
    model: str
    method: str | None
    sparsity: float | None
    state: JobState
    stage: str | None = Field(None, description="the running cell's current stage")
    progress: float
    queue: str | None = Field(None, description="the worker class the cell was routed to by its memory plan")
    error: str | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [{
                "id": "0b7c7a2e-4f0e-4d55-9d0c-3f1d2a9b8c11", "name": "shortgpt-0.5",
                "model": "/data/models/stories260k", "method": "shortgpt",
                "sparsity": 0.5, "state": "running", "stage": "evaluate_pruned", "progress": 71.4, "queue": "small",
                "error": None,
            }]
        }
    }


class SweepCells(BaseModel):
    """A sweep's cells: how many are in each state, and each one."""

    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    items: list[SweepCell]

    model_config = {
        "json_schema_extra": {
            "examples": [{
                "total": 4, "queued": 1, "running": 2, "succeeded": 1, "failed": 0, "cancelled": 0,
                "items": [{"id": "0b7c7a2e-4f0e-4d55-9d0c-3f1d2a9b8c11", "name": "2ssp-0.25",
                           "model": "/data/models/stories260k", "method": "2ssp",
                           "sparsity": 0.25, "state": "succeeded", "stage": "done", "progress": 100.0,
                           "queue": "small", "error": None}],
            }]
        }
    }

    @classmethod
    def of(cls, cells: list[Job]) -> SweepCells:
        from service.sweeps import cell_items, counts

        return cls(**counts(cells), items=[SweepCell(**item) for item in cell_items(cells)])


class Comparison(BaseModel):
    """A sweep's comparison as it stands: the rows of the cells that ended (in the sweep's order), and whether
    every cell ended."""

    complete: bool = Field(description="every cell ended; the sweep's artifact holds the comparison once it succeeded")
    rows: list[dict[str, Any]] = Field(
        description="comparison.json's rows so far (a failed or cancelled cell: `error`)"
    )
    dense: dict[str, Any] | None = Field(None, description="the dense model's measurements (from the first cell that "
                                         "succeeded; null in a sweep over several models)")
    dense_by_model: dict[str, dict[str, Any]] | None = Field(
        None, description="a sweep over several models: each model's dense measurements (its rows have `model`)"
    )
    cells: SweepCells

    model_config = {
        "json_schema_extra": {
            "examples": [{
                "complete": False,
                "rows": [{"method": "2ssp", "sparsity_target": 0.25, "sparsity_achieved": 0.2535,
                          "perplexity": [{"dataset": "tinystories-val-1000.txt:500:540", "domain": "in-domain",
                                          "dense": 6.94, "pruned": 25.41}], "error": None},
                         {"method": "shortgpt", "sparsity_target": 0.25, "sparsity_achieved": None, "perplexity": [],
                          "error": "InfeasibleTarget: ..."}],
                "dense": {"perplexity": [{"dataset": "tinystories-val-1000.txt:500:540", "perplexity": 6.94}]},
                "cells": {"total": 4, "queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0,
                          "items": []},
            }]
        }
    }


class JobLinks(BaseModel):
    self: str
    cancel: str
    artifact: str
    manifest: str
    events: str


class ArtifactInfo(BaseModel):
    store: Literal["local", "s3"]
    attempt: int
    files: int
    total_bytes: int
    manifest_sha256: str = Field(description="sha256 of manifest.json; verify downloads against it")


class JobOut(BaseModel):
    id: str
    state: JobState
    stage: str | None = Field(None, description="current or last pipeline stage")
    progress: float = Field(description="overall percent done, 0 to 100")
    error: str | None = None
    report: dict[str, Any] | None = Field(None, description=JOB_FIELDS_DOC)
    kind: JobKind = Field(
        description="prune: one method at one sparsity; sweep: methods x sparsities, run as one `cell` job per method "
        "and sparsity; cell: one of a sweep's"
    )
    parent_id: str | None = Field(
        None, description="a cell: the sweep it belongs to", examples=["5f1c2d3e-8a9b-4c0d-9e1f-2a3b4c5d6e7f"]
    )
    cells: SweepCells | None = Field(
        None,
        description="a sweep: its cells (how many are queued, running, succeeded, failed, cancelled, and each one's "
        "job, state and live stage). The sweep's progress is its cells' mean; it is running from its first cell's "
        "start until its comparison is written",
    )
    model: str
    method: str | None = Field(description="the pruning method (null for a sweep: see spec.methods)")
    sparsity: float | None = Field(description="the target sparsity (null for a sweep: see spec.sparsities)")
    spec: dict[str, Any] = Field(description="the normalized request (PruneSpec or SweepSpec fields)")
    stage_timings: dict[str, float] = Field(description="seconds spent in each finished stage")
    queue: str | None = Field(
        None, description="the worker class (Celery queue) the job was routed to by its memory plan; null: the default"
    )
    attempt: int
    max_attempts: int
    cancel_requested: bool
    artifact: ArtifactInfo | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: JobLinks

    @classmethod
    def from_row(cls, job: Job, cells: list[Job] | None = None) -> JobOut:
        """`cells`: a sweep's cells (its progress and `cells` follow them)."""
        prefix = f"/jobs/{job.id}"
        progress, stage = job.progress, job.stage
        summary = None
        if cells:
            from service.sweeps import progress as cells_progress

            summary = SweepCells.of(cells)
            if job.state in (JobState.queued.value, JobState.running.value):
                progress = max(progress, 0.99 * cells_progress(cells))  # the comparison's writer: 99
                if job.worker_id is None:
                    ended = summary.total - summary.queued - summary.running
                    stage = f"cells: {ended} of {summary.total} ended, {summary.running} running"
        artifact = None
        if job.artifact and job.state == JobState.succeeded.value:
            artifact = ArtifactInfo.model_validate(job.artifact, from_attributes=False, strict=False)
        return cls(
            id=job.id,
            state=JobState(job.state),
            stage=stage,
            progress=round(progress, 2),
            error=job.error,
            report=job.report if job.state == JobState.succeeded.value else None,
            kind=JobKind(job.kind),
            model=job.model,
            method=job.method,
            sparsity=job.sparsity,
            parent_id=job.parent_id,
            cells=summary,
            spec=job.spec,
            stage_timings=job.stage_timings or {},
            queue=job.queue,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            artifact=artifact,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links=JobLinks(
                self=prefix, cancel=f"{prefix}/cancel", artifact=f"{prefix}/artifact", manifest=f"{prefix}/manifest",
                events=f"{prefix}/events",
            ),
        )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int
    next: str | None = Field(None, description="URL of the next page, if any")


class JobEventOut(BaseModel):
    id: int = Field(description="position in the job's history (the cursor for `after`)")
    at: datetime = Field(description="when it happened")
    kind: EventKind
    attempt: int = Field(description="the attempt it belongs to (0 before the first claim)")
    state: JobState = Field(description="the job's state after the event")
    stage: str | None = Field(None, description="stage_started / stage_finished: the pipeline stage")
    detail: str | None = Field(None, description="the worker that started an attempt, or why the job changed state")
    data: dict[str, Any] | None = Field(None, description='e.g. {"seconds": ...} for stage_finished')

    @classmethod
    def from_row(cls, event: JobEvent) -> JobEventOut:
        return cls(
            id=event.id, at=event.at, kind=EventKind(event.kind), attempt=event.attempt, state=JobState(event.state),
            stage=event.stage, detail=event.detail, data=event.data,
        )


class JobEventPage(BaseModel):
    items: list[JobEventOut]
    next: str | None = Field(None, description="URL of the next page (more events, or the ones recorded later)")


class PresignedFile(BaseModel):
    path: str
    size: int
    sha256: str
    url: str


class PresignedArtifact(BaseModel):
    kind: Literal["presigned"] = "presigned"
    expires_in: int
    manifest_sha256: str
    manifest_url: str
    files: list[PresignedFile]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class WorkerClassReadiness(BaseModel):
    live_workers: int = Field(description="workers of the class whose advertisement has not expired")
    queued: int = Field(description="jobs queued for the class")
    oldest_queued_s: float | None = Field(description="age of its oldest queued job, since submission")


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    classes: dict[str, WorkerClassReadiness] = Field(
        default_factory=dict,
        description="with a broker: each worker class (queue) with a live worker or a queued job (the jobs routed "
        "to no class count in the default queue)",
    )

"""Typed records passed between the worker, the database and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypedDict


class ArtifactRecord(TypedDict):
    """Where a succeeded job's output is: stored as `jobs.artifact`, written once the manifest exists."""

    store: Literal["local", "s3"]
    prefix: str  # jobs/{job_id}/attempt-{n}
    attempt: int
    manifest_key: str
    manifest_sha256: str
    files: int
    total_bytes: int


@dataclass(frozen=True)
class StageMark:
    """A stage started or finished in a running job (recorded as a job event by the next heartbeat)."""

    kind: Literal["stage_started", "stage_finished"]
    stage: str
    at: datetime
    seconds: float | None = None  # stage_finished: time spent in the stage
    percent: float | None = None  # the job's overall percent at that moment

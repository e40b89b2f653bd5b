"""Celery tasks: thin wrappers that pass a job id to the runner."""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded

from service.broker import RUN_JOB_TASK
from worker.celery_app import app
from worker.runner import JobRunner

log = logging.getLogger(__name__)
_runner: JobRunner | None = None


def runner() -> JobRunner:
    """One runner (DB engine, store client) per worker child, created after the fork."""
    global _runner
    if _runner is None:
        _runner = JobRunner(app.conf.twossp_settings)
    return _runner


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return runner().run(job_id, timeout_exceptions=(SoftTimeLimitExceeded,))

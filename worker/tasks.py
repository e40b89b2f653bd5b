"""The Celery task: it receives a job id, and runs the job in a process of its own that it supervises
(`worker/supervise.py`).

The task runs in a pool process that never imports torch, so the pool process is kept from one message to the next.
Before it starts a job process it reads the job: a message whose job cannot be claimed here (cancelled while queued,
already run, or re-routed to another queue) is acknowledged and dropped, and no job process is started. A read or a
claim that fails on a database error is retried (a new message, then the old one is acknowledged), so a database
outage never eats a queued job's message.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from service import lifecycle
from service.broker import RUN_JOB_TASK
from service.db.session import Database
from worker.advertise import worker_capacity
from worker.celery_app import app
from worker.supervise import CLAIM_UNAVAILABLE_EXIT, run_job_process

log = logging.getLogger(__name__)
_db: Database | None = None
DROPPED = "dropped"  # the task's result when the job could not be claimed here


def db() -> Database:
    """The pool process's database (created after the fork)."""
    global _db
    if _db is None:
        _db = Database(app.conf.twossp_settings)
    return _db


def delivery(task: Task) -> lifecycle.Delivery | None:
    """The queue the task's message came from (its routing key), which the job must still be routed to."""
    queue = (task.request.delivery_info or {}).get("routing_key")
    return lifecycle.Delivery(queue, app.conf.twossp_settings.celery_queue) if queue else None


@app.task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Task, job_id: str) -> str:
    settings = app.conf.twossp_settings
    source = delivery(self)
    try:
        with db().session() as session:
            why_not = lifecycle.unclaimable(session, job_id, source)
    except SQLAlchemyError as exc:
        retry(self, f"could not claim job {job_id}: {type(exc).__name__}: {exc}")
    if why_not is not None:
        log.info("job %s %s: message dropped, no job process started", job_id, why_not)
        return DROPPED
    try:
        capacity = worker_capacity(settings)
    except RuntimeError as exc:  # not advertised either (see worker/advertise.py): jobs run with their budgets
        log.warning("cannot tell this worker's memory (%s); job budgets are not capped", exc)
        capacity = None
    status = run_job_process(settings, db(), job_id, delivery=source, capacity=capacity)
    if status == CLAIM_UNAVAILABLE_EXIT:
        retry(self, f"could not claim job {job_id} (database error)")
    return f"exit {status}"


def retry(task: Task, reason: str) -> NoReturn:
    """The job stays queued: send its message again after a backoff, then acknowledge this one."""
    delay = min(app.conf.twossp_settings.claim_retry_max_s, 0.5 * 2 ** task.request.retries)
    log.warning("%s; retrying in %.1f s", reason, delay)
    raise task.retry(countdown=delay, max_retries=None)

"""Celery tasks: thin wrappers that pass a job id to the runner.

A claim that fails on a database error is retried (a new message, then the old one is acknowledged), so a
database outage never eats a queued job's message. A hard time-limit kill is recorded at once by the worker's
main process (it knows which pool process ran the job), not after the lease runs out.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init
from celery.worker.request import Request

from service import lifecycle
from service.broker import RUN_JOB_TASK
from service.db.session import Database
from worker.advertise import worker_capacity
from worker.celery_app import app
from worker.runner import ClaimUnavailable, JobRunner

log = logging.getLogger(__name__)
_runner: JobRunner | None = None
_main_db: Database | None = None


def runner() -> JobRunner:
    """One runner (DB engine, store client) per worker child, created after the fork; it runs jobs within the
    memory this worker advertises."""
    global _runner
    if _runner is None:
        settings = app.conf.twossp_settings
        try:
            capacity = worker_capacity(settings)
        except RuntimeError as exc:  # not advertised either (see worker/advertise.py): jobs run with their budgets
            log.warning("cannot tell this worker's memory (%s); job budgets are not capped", exc)
            capacity = None
        _runner = JobRunner(settings, capacity=capacity)
    return _runner


class JobRequest(Request):
    """Runs in the worker's main process."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft and self.worker_pid:
            # the pool kills the process only after this returns: kill it first, so the run cannot record an
            # outcome of its own while its timeout is being recorded
            try:
                os.kill(self.worker_pid, signal.SIGKILL)
            except OSError:
                pass
        super().on_timeout(soft, timeout)
        if soft or not self.args:
            return
        try:
            # the killed pool process's runner wrote worker_id = host:pid
            with main_db().session() as session:
                recorded = lifecycle.kill(session, str(self.args[0]), f"{socket.gethostname()}:{self.worker_pid}",
                                          "timeout")
            log.warning("job %s killed at its hard time limit (%ss); recorded: %s", self.args[0], timeout, recorded)
        except Exception:  # the reaper records it once the lease runs out
            log.exception("could not record the hard time-limit kill of job %s", self.args[0])
        finally:
            main_db().engine.dispose()  # no connection stays open across the pool's forks


def main_db() -> Database:
    """The main process's database (recording hard time-limit kills)."""
    global _main_db
    if _main_db is None:
        _main_db = Database(app.conf.twossp_settings)
    return _main_db


@worker_init.connect(weak=False)
def _create_main_db(**_: object) -> None:
    """Created (no connection yet) before the pool forks: the database modules are imported by the main thread
    then, never by a thread of the main process while it forks a pool process."""
    main_db()


class JobTask(Task):
    Request = JobRequest


def delivery(task: Task) -> lifecycle.Delivery | None:
    """The queue the task's message came from (its routing key), which the job must still be routed to."""
    queue = (task.request.delivery_info or {}).get("routing_key")
    return lifecycle.Delivery(queue, app.conf.twossp_settings.celery_queue) if queue else None


@app.task(name=RUN_JOB_TASK, base=JobTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Task, job_id: str) -> str:
    try:
        return runner().run(job_id, timeout_exceptions=(SoftTimeLimitExceeded,), delivery=delivery(self))
    except ClaimUnavailable as exc:
        delay = min(app.conf.twossp_settings.claim_retry_max_s, 0.5 * 2 ** self.request.retries)
        log.warning("%s; retrying in %.1f s", exc, delay)
        raise self.retry(exc=exc, countdown=delay, max_retries=None) from None

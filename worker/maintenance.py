"""The periodic reaper and outbox dispatcher.

- A running job whose lease expired lost its worker (killed, crashed, partitioned): it is re-queued with a
  new dispatch if attempts remain, failed with `timeout` if it ran past its time limit, otherwise failed.
- A running job asked to cancel that has not stopped within `cancel_grace_s` (stuck in a step with no safe
  point, e.g. a long download) is killed through the broker and recorded as cancelled. The embedded broker
  cannot do this; there the embedded worker kills its own child.
- A queued job that was never handed to the broker (the API died or the broker was down right after the
  commit) is published; so is one that has waited in the queue suspiciously long (a lost message).
Every transition is a compare-and-set on (id, attempt, state), so several reapers may run at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select, update

from service.broker import Broker
from service.db.models import Job, JobState
from service.db.session import Database
from service.db.types import utcnow
from service.lifecycle import CANCEL_KILLED, dispatch
from service.settings import Settings

log = logging.getLogger(__name__)

RUNNING = JobState.running.value
QUEUED = JobState.queued.value


@dataclass
class MaintenanceResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)


def reap_expired_leases(db: Database, settings: Settings, result: MaintenanceResult) -> None:
    now = utcnow()
    with db.session() as session:
        expired = session.execute(
            select(Job.id, Job.attempt, Job.max_attempts, Job.started_at, Job.time_limit_s, Job.cancel_requested)
            .where(Job.state == RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now))
            .limit(500)
        ).all()
        for job_id, attempt, max_attempts, started_at, time_limit_s, cancel_requested in expired:
            fence = (Job.id == job_id, Job.attempt == attempt, Job.state == RUNNING)
            lost = f"worker lost (lease expired) on attempt {attempt} of {max_attempts}"
            if started_at is not None and now - started_at > timedelta(seconds=time_limit_s):
                values = {"state": JobState.failed.value, "error": f"timeout: exceeded {time_limit_s:g} s ({lost})"}
                bucket = result.failed
            elif cancel_requested:
                values = {"state": JobState.cancelled.value, "error": "cancelled by user"}
                bucket = result.cancelled
            elif attempt >= max_attempts:
                values = {"state": JobState.failed.value, "error": f"{lost}; no attempts left"}
                bucket = result.failed
            else:
                values = {"state": QUEUED, "error": None, "dispatched": False, "dispatched_at": None}
                bucket = result.requeued
            terminal = values["state"] != QUEUED
            changed = session.execute(
                update(Job)
                .where(*fence)
                .values(
                    **values,
                    worker_id=None,
                    lease_until=None,
                    updated_at=now,
                    finished_at=now if terminal else None,
                )
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
            if changed:
                log.warning("job %s: %s -> %s", job_id, lost, values["state"])
                bucket.append(job_id)


def stop_overdue_cancels(db: Database, broker: Broker, settings: Settings, result: MaintenanceResult) -> None:
    now = utcnow()
    overdue = now - timedelta(seconds=settings.cancel_grace_s)
    with db.session() as session:
        jobs = session.execute(
            select(Job.id, Job.attempt)
            .where(Job.state == RUNNING, Job.cancel_requested.is_(True), Job.cancel_requested_at <= overdue)
            .limit(500)
        ).all()
        for job_id, attempt in jobs:
            if not broker.stop(job_id):
                return
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempt == attempt, Job.state == RUNNING)
                .values(
                    state=JobState.cancelled.value,
                    error=CANCEL_KILLED,
                    worker_id=None,
                    lease_until=None,
                    updated_at=now,
                    finished_at=now,
                )
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
            if changed:
                log.warning("job %s: killed %g s after its cancel", job_id, settings.cancel_grace_s)
                result.cancelled.append(job_id)


def dispatch_outbox(db: Database, broker: Broker, settings: Settings, result: MaintenanceResult) -> None:
    now = utcnow()
    grace = now - timedelta(seconds=settings.dispatch_grace_s)
    stale = now - timedelta(seconds=settings.redispatch_after_s)
    with db.session() as session:
        pending = session.scalars(
            select(Job.id)
            .where(
                Job.state == QUEUED,
                Job.cancel_requested.is_(False),
                or_(
                    (Job.dispatched.is_(False)) & (Job.updated_at <= grace),
                    (Job.dispatched.is_(True)) & (Job.dispatched_at < stale),
                ),
            )
            .order_by(Job.created_at)
            .limit(500)
        ).all()
        for job_id in pending:
            if dispatch(session, broker, job_id):
                result.dispatched.append(job_id)


def run_maintenance(db: Database, broker: Broker, settings: Settings) -> MaintenanceResult:
    result = MaintenanceResult()
    reap_expired_leases(db, settings, result)
    stop_overdue_cancels(db, broker, settings, result)
    # re-queued jobs go out at once; the grace only protects fresh submissions the API is still publishing
    with db.session() as session:
        for job_id in result.requeued:
            if dispatch(session, broker, job_id):
                result.dispatched.append(job_id)
    dispatch_outbox(db, broker, settings, result)
    return result

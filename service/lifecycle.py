"""The job lifecycle: compare-and-set transitions on job rows. Every write by a worker is fenced by
(id, attempt, state); dispatching marks the outbox row once the broker has the message."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.broker import Broker
from service.db.models import Job, JobKind, JobState
from service.db.types import utcnow

log = logging.getLogger(__name__)

RUNNING = JobState.running.value
QUEUED = JobState.queued.value
CANCEL_KILLED = "cancelled by user (killed: it did not stop within the cancel grace)"


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    spec: dict[str, Any]
    time_limit_s: float
    kind: str = JobKind.prune.value


def claim(
    session: Session, job_id: str, worker_id: str, lease_s: float, time_limit_s: float | None = None
) -> Claim | None:
    """queued → running with attempt+1 and a fresh lease; None if someone else has it or it is not queued.

    `time_limit_s` is this worker's hard limit: the row keeps the smaller of it and the submitted limit, so
    the reaper judges a lost attempt by the limit that actually applied to it.
    """
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == QUEUED, Job.cancel_requested.is_(False))
        .values(
            state=RUNNING,
            attempt=Job.attempt + 1,
            worker_id=worker_id,
            lease_until=now + timedelta(seconds=lease_s),
            started_at=now,
            stage=None,
            progress=0.0,
            stage_timings={},
            error=None,
            updated_at=now,
        )
        .returning(Job.attempt, Job.spec, Job.time_limit_s, Job.kind)
    ).first()
    if row is None:
        session.commit()
        return None
    limit = row[2]
    if time_limit_s is not None and time_limit_s < limit:
        limit = time_limit_s
        session.execute(
            update(Job).where(Job.id == job_id, Job.attempt == row[0]).values(time_limit_s=time_limit_s)
        )
    session.commit()
    return Claim(job_id=job_id, attempt=row[0], spec=row[1], time_limit_s=limit, kind=row[3])


def heartbeat(
    session: Session,
    claim_: Claim,
    lease_s: float,
    stage: str | None,
    percent: float,
    timings: dict[str, float],
) -> bool | None:
    """Renew the lease and record progress. Returns cancel_requested, or None when fenced out."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == claim_.job_id, Job.attempt == claim_.attempt, Job.state == RUNNING)
        .values(
            lease_until=now + timedelta(seconds=lease_s),
            stage=stage,
            progress=percent,
            stage_timings=timings,
            updated_at=now,
        )
        .returning(Job.cancel_requested)
    ).first()
    session.commit()
    return None if row is None else bool(row[0])


def finish(
    session: Session,
    claim_: Claim,
    state: JobState,
    *,
    error: str | None = None,
    require_no_cancel: bool = False,
    **values: Any,
) -> bool:
    """running → terminal, only for the current attempt. Returns False when fenced out."""
    now = utcnow()
    query = update(Job).where(Job.id == claim_.job_id, Job.attempt == claim_.attempt, Job.state == RUNNING)
    if require_no_cancel:
        query = query.where(Job.cancel_requested.is_(False))
    result = session.execute(
        query.values(state=state.value, error=error, finished_at=now, lease_until=None, updated_at=now, **values)
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def current(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))


def dispatch(session: Session, broker: Broker, job_id: str) -> bool:
    """Publish a queued job and mark it dispatched. A failure leaves it for the dispatcher loop."""
    try:
        broker.publish(job_id)
    except Exception as exc:  # broker down: the reaper/dispatcher republishes undispatched rows
        log.warning("could not publish job %s (will retry from the outbox): %s", job_id, exc)
        return False
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued.value)
        .values(dispatched=True, dispatched_at=utcnow())
    )
    session.commit()
    return True

"""The job lifecycle: every change of a job's state, each one compare-and-set, in one place.

    submit ─▶ queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
                ▲ │ └─cancel─▶ cancelled   │
                │ └─reroute (its class dead past the grace) ─▶ queued in a live class, or failed
                └──── requeue (shutdown) / reap (lease expired, attempts left) ◀┘

The API submits and cancels, the runner (in the job's process) claims, beats and finishes, the job's supervisor
(the Celery task or the embedded worker) kills or gives back its job process's attempt, the reaper reaps expired
leases, kills overdue cancels and re-routes jobs stranded in a worker class with no live worker. A worker's writes
are fenced by (id, attempt, state), so a stale attempt can never overwrite a newer one; the supervisor, which does
not know the attempt, fences by its job process's worker id. A claim names the queue its message came from, so a message
left in a job's old queue after a re-route claims nothing. Nobody else writes `jobs.state`.

Each transition appends a `job_events` row in the same transaction, so the history cannot disagree with the
row; the heartbeat also records the stages the job started and finished since the previous beat. Events are
listed in the order they were recorded (`id`); `at` is when each happened.

A sweep is a parent job with one `cell` child per method and sparsity. The parent is never claimed as a job: its
cells are, and their transitions move it (`_cell_started`, `_cell_ended`, in the cell's transaction, the cell's
row first and then the parent's, so concurrent cells serialize on the parent): queued → running when its first cell
starts, cancelled when it was asked to cancel and its last cell ended. Once every cell ended, the comparison is
claimed like a job (`claim_comparison`: running with an attempt, a lease and a worker, fenced like any run) and
finished with `finish`; a lost comparison attempt is reaped back to waiting for a writer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from service.broker import Broker
from service.db.models import EventKind, Job, JobEvent, JobKind, JobState, WorkerQueue, new_id
from service.db.types import utcnow
from service.records import StageMark

log = logging.getLogger(__name__)

RUNNING = JobState.running.value
QUEUED = JobState.queued.value
SWEEP = JobKind.sweep.value
PENDING = (QUEUED, RUNNING)
CANCELLED_BY_USER = "cancelled by user"
CANCEL_KILLED = "cancelled by user (killed: it did not stop within the cancel grace)"
HARD_TIMEOUT = "timeout: the job exceeded its hard time limit"


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    spec: dict[str, Any]
    time_limit_s: float
    kind: str = JobKind.prune.value
    parent_id: str | None = None  # a cell: its sweep


def cell_name(method: str | None, sparsity: float | None) -> str:
    """How a sweep names one of its cells (`2ssp@0.25`, the prefix of the cell's stages in a one-process sweep)."""
    from twossp_core.plan.stages import run_prefix

    return run_prefix(method or "?", sparsity if sparsity is not None else float("nan"))


def _children() -> Any:
    """The SQL condition: the job (a sweep) has cells."""
    child = aliased(Job)
    return select(child.id).where(child.parent_id == Job.id).exists()


def _pending_children() -> Any:
    """The SQL condition: some cell of the job is queued or running."""
    child = aliased(Job)
    return select(child.id).where(child.parent_id == Job.id, child.state.in_(PENDING)).exists()


def is_parent() -> Any:
    """The SQL condition: the job is a sweep whose cells run as jobs of their own (a sweep submitted before sweeps had
    cells has none and runs as one job)."""
    return and_(Job.kind == SWEEP, _children())


def _changed(result: Any) -> bool:
    return result.rowcount == 1


STAGE_MAX_CHARS = 50  # jobs.stage and job_events.stage


def _event(
    session: Session,
    job_id: str,
    kind: EventKind,
    attempt: int,
    state: str,
    *,
    stage: str | None = None,
    detail: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Record an event. Its id (the database's sequence) is the job's one order of events: every transition takes
    the job's row first (an UPDATE), so a job's events get their ids in commit order; and `at` never goes back
    along it (a clock behind, or an event recorded later than it happened, gets the job's latest time)."""
    recorded = at or utcnow()
    latest = session.scalar(select(func.max(JobEvent.at)).where(JobEvent.job_id == job_id))
    if latest is not None and latest > recorded:
        recorded = latest
    session.add(
        JobEvent(
            job_id=job_id, kind=kind.value, attempt=attempt, state=state,
            stage=None if stage is None else stage[:STAGE_MAX_CHARS], detail=detail, data=data, at=recorded,
        )
    )


def _stage_events(session: Session, claim_: Claim, marks: Sequence[StageMark]) -> None:
    for mark in marks:
        data: dict[str, Any] = {}
        if mark.seconds is not None:
            data["seconds"] = round(mark.seconds, 3)
        if mark.percent is not None:
            data["percent"] = round(mark.percent, 2)
        data["worker_at"] = mark.at.isoformat()  # when the worker saw it; the event is recorded at its heartbeat
        _event(session, claim_.job_id, EventKind(mark.kind), claim_.attempt, RUNNING, stage=mark.stage, data=data)


# -- the API ---------------------------------------------------------------------------------------------
def submit(session: Session, job: Job, cells: Sequence[Job] = ()) -> None:
    """Insert a new job as queued and undispatched (the row is the outbox entry) and commit. With `cells` the job is
    a sweep's parent: it has nothing of its own to publish (marked dispatched, never published: its cells are), and
    every cell is inserted queued and undispatched with it, in the same transaction.

    An IntegrityError (the owner's Idempotency-Key is taken) propagates with the session rolled back.
    """
    for row in (job, *cells):
        row.state = QUEUED
        row.progress, row.stage, row.stage_timings = 0.0, None, {}
        row.cancel_requested, row.attempt, row.dispatched = False, 0, False
        row.id = row.id or new_id()
    job.dispatched = bool(cells)
    submitted = job.created_at or utcnow()
    job.created_at = submitted
    for index, cell in enumerate(cells, start=1):
        cell.parent_id = job.id
        # one microsecond apart, in submission order: (created_at, id) lists a sweep's cells in its order even
        # where the clock gives several rows the same instant
        cell.created_at = submitted + timedelta(microseconds=index)
    session.add(job)
    try:
        session.flush()
        session.add_all(cells)
        session.flush()
        _event(session, job.id, EventKind.submitted, 0, QUEUED,
               detail=f"{len(cells)} cells" if cells else None)
        for cell in cells:
            _event(session, cell.id, EventKind.submitted, 0, QUEUED, detail=f"cell of sweep {job.id}")
        session.commit()
    except Exception:
        session.rollback()
        raise


def dispatch(session: Session, broker: Broker, job_id: str) -> bool:
    """Publish a queued job to its queue and mark it dispatched. A failure leaves it for the dispatcher loop."""
    try:
        queue, was_dispatched = session.execute(select(Job.queue, Job.dispatched).where(Job.id == job_id)).one()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("could not read job %s's queue (will retry from the outbox): %s", job_id, exc)
        return False
    try:
        broker.publish(job_id, queue)
    except Exception as exc:  # broker down: the reaper/dispatcher republishes undispatched rows
        log.warning("could not publish job %s (will retry from the outbox): %s", job_id, exc)
        return False
    try:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == QUEUED)
            .values(dispatched=True, dispatched_at=utcnow())
            .returning(Job.attempt)
        ).first()
        if row is not None and was_dispatched:  # the outbox published it again: said as such, not "dispatched"
            _event(session, job_id, EventKind.republished, row[0], QUEUED,
                   detail="published again: its message was lost, or no worker claimed it in time")
        elif row is not None:
            _event(session, job_id, EventKind.dispatched, row[0], QUEUED)
        session.commit()
    except SQLAlchemyError as exc:  # published but not marked: the outbox publishes it again (claims are CAS)
        session.rollback()
        log.warning("job %s published but not marked dispatched (the outbox will republish it): %s", job_id, exc)
    return True


def request_cancel(session: Session, job_id: str) -> None:
    """queued → cancelled at once; running → cancel_requested (the worker stops at its next safe point, or is
    killed after the grace). Finished jobs are left alone. A sweep's cancel cancels every cell of it the same way;
    the sweep ends `cancelled` with its last cell (at once when none runs)."""
    if session.scalar(select(is_parent()).where(Job.id == job_id)):
        _cancel_sweep(session, job_id)
        return
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == QUEUED)
        .values(
            state=JobState.cancelled.value, cancel_requested=True, cancel_requested_at=now, finished_at=now,
            error=CANCELLED_BY_USER, updated_at=now,
        )
        .returning(Job.attempt, Job.parent_id)
    ).first()
    if queued is not None:
        _event(session, job_id, EventKind.cancelled, queued[0], JobState.cancelled.value, detail=CANCELLED_BY_USER)
        if queued[1] is not None:
            _cell_ended(session, job_id, queued[1], JobState.cancelled.value, CANCELLED_BY_USER, now)
    running = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == RUNNING, Job.cancel_requested.is_(False))
        .values(cancel_requested=True, cancel_requested_at=now, updated_at=now)
        .returning(Job.attempt)
    ).first()
    if running is not None:
        _event(session, job_id, EventKind.cancel_requested, running[0], RUNNING)
    session.commit()


def _cancel_sweep(session: Session, parent_id: str) -> None:
    """Cancel every cell of a sweep (the queued ones at once, the running ones asked to stop), then the sweep: asked
    to cancel, and cancelled at once when no cell is left running and no comparison is being written."""
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.parent_id == parent_id, Job.state == QUEUED)
        .values(
            state=JobState.cancelled.value, cancel_requested=True, cancel_requested_at=now, finished_at=now,
            error=CANCELLED_BY_USER, updated_at=now,
        )
        .returning(Job.id, Job.attempt, Job.method, Job.sparsity)
    ).all()
    running = session.execute(
        update(Job)
        .where(Job.parent_id == parent_id, Job.state == RUNNING, Job.cancel_requested.is_(False))
        .values(cancel_requested=True, cancel_requested_at=now, updated_at=now)
        .returning(Job.id, Job.attempt)
    ).all()
    parent = session.execute(
        update(Job)
        .where(Job.id == parent_id, Job.state.in_(PENDING), Job.cancel_requested.is_(False))
        .values(cancel_requested=True, cancel_requested_at=now, updated_at=now)
        .returning(Job.attempt, Job.state)
    ).first()
    for cell_id, attempt, *_ in queued:
        _event(session, cell_id, EventKind.cancelled, attempt, JobState.cancelled.value, detail=CANCELLED_BY_USER)
    for cell_id, attempt in running:
        _event(session, cell_id, EventKind.cancel_requested, attempt, RUNNING)
    if parent is not None:
        _event(session, parent_id, EventKind.cancel_requested, parent[0], parent[1],
               detail=f"{len(queued)} queued cells cancelled, {len(running)} running cells asked to stop")
        for cell_id, _, method, sparsity in queued:
            _event(session, parent_id, EventKind.cell_ended, parent[0], parent[1],
                   detail=f"{cell_name(method, sparsity)} cancelled: {CANCELLED_BY_USER}",
                   data={"cell": cell_id, "state": JobState.cancelled.value})
        _settle(session, parent_id, now)
    session.commit()


def _cell_started(session: Session, cell_id: str, parent_id: str, worker_id: str, now: datetime) -> None:
    """A cell was claimed: its sweep is running (queued → running with its first cell)."""
    name = cell_name(*session.execute(select(Job.method, Job.sparsity).where(Job.id == cell_id)).one())
    row = session.execute(
        update(Job).where(Job.id == parent_id, Job.state == QUEUED)
        .values(state=RUNNING, started_at=now, updated_at=now)
        .returning(Job.attempt)
    ).first()
    if row is not None:
        _event(session, parent_id, EventKind.started, row[0], RUNNING, detail=f"cell {name} started on {worker_id}",
               at=now)


def _cell_ended(session: Session, cell_id: str, parent_id: str, state: str, error: str | None, now: datetime) -> None:
    """In the transaction that ended a cell (its row first, then its sweep's, so cells ending at once take turns
    on the sweep's row): record it on the sweep, and settle the sweep (see `_settle`)."""
    parent = session.execute(
        update(Job).where(Job.id == parent_id).values(updated_at=now).returning(Job.attempt, Job.state)
    ).first()
    if parent is None:
        return
    name = cell_name(*session.execute(select(Job.method, Job.sparsity).where(Job.id == cell_id)).one())
    _event(session, parent_id, EventKind.cell_ended, parent[0], parent[1],
           detail=f"{name} {state}" + (f": {error}" if error else ""), data={"cell": cell_id, "state": state}, at=now)
    _settle(session, parent_id, now)


def _settle(session: Session, parent_id: str, now: datetime) -> None:
    """A sweep asked to cancel whose cells all ended, with no comparison being written, is cancelled. (One that was
    not asked to cancel waits for its comparison: `claim_comparison`.)"""
    row = session.execute(
        update(Job)
        .where(Job.id == parent_id, Job.state.in_(PENDING), Job.cancel_requested.is_(True), Job.worker_id.is_(None),
               ~_pending_children())
        .values(state=JobState.cancelled.value, error=CANCELLED_BY_USER, finished_at=now, lease_until=None,
                updated_at=now)
        .returning(Job.attempt)
    ).first()
    if row is not None:
        _event(session, parent_id, EventKind.cancelled, row[0], JobState.cancelled.value, detail=CANCELLED_BY_USER,
               at=now)


# -- the runner ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    """The queue a job's message came from, and the queue that a job routed to no class (`queue` null) goes to."""

    queue: str
    default_queue: str

    def matches(self) -> Any:
        """The SQL condition: the job is (still) routed to this queue."""
        return func.coalesce(Job.queue, self.default_queue) == self.queue


def claim(
    session: Session,
    job_id: str,
    worker_id: str,
    lease_s: float,
    time_limit_s: float | None = None,
    delivery: Delivery | None = None,
) -> Claim | None:
    """queued → running with attempt+1 and a fresh lease; None if someone else has it, it is not queued, or (with
    `delivery`) it was re-routed away from the queue its message came from.

    `time_limit_s` is this worker's hard limit: the row keeps the smaller of it and the submitted limit, so
    the reaper judges a lost attempt by the limit that actually applied to it.
    """
    now = utcnow()
    conditions = [Job.id == job_id, Job.state == QUEUED, Job.cancel_requested.is_(False), ~is_parent()]
    if delivery is not None:
        conditions.append(delivery.matches())
    row = session.execute(
        update(Job)
        .where(*conditions)
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
        .returning(Job.attempt, Job.spec, Job.time_limit_s, Job.kind, Job.parent_id)
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
    _event(session, job_id, EventKind.started, row[0], RUNNING, detail=worker_id, data={"time_limit_s": limit}, at=now)
    if row[4] is not None:
        _cell_started(session, job_id, row[4], worker_id, now)
    session.commit()
    return Claim(job_id=job_id, attempt=row[0], spec=row[1], time_limit_s=limit, kind=row[3], parent_id=row[4])


def claim_comparison(session: Session, parent_id: str, worker_id: str, lease_s: float) -> Claim | None:
    """A sweep whose cells all ended, not asked to cancel and with nobody writing its comparison: running with
    attempt+1, this worker and a fresh lease (its heartbeat and `finish` are fenced like a job's). None when it is not
    such a sweep (a cell still runs, another worker writes the comparison, it ended)."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == parent_id, Job.state.in_(PENDING), Job.cancel_requested.is_(False),
               Job.worker_id.is_(None), is_parent(), ~_pending_children())
        .values(state=RUNNING, attempt=Job.attempt + 1, worker_id=worker_id,
                lease_until=now + timedelta(seconds=lease_s), started_at=func.coalesce(Job.started_at, now),
                updated_at=now)
        .returning(Job.attempt, Job.spec, Job.time_limit_s, Job.kind)
    ).first()
    if row is None:
        session.commit()
        return None
    _event(session, parent_id, EventKind.started, row[0], RUNNING, detail=f"comparison on {worker_id}", at=now)
    session.commit()
    return Claim(job_id=parent_id, attempt=row[0], spec=row[1], time_limit_s=row[2], kind=row[3])


def awaiting_comparison(session: Session, limit: int = 100) -> list[str]:
    """Sweeps whose cells all ended and whose comparison nobody writes (`claim_comparison` would take them)."""
    return list(session.scalars(
        select(Job.id)
        .where(Job.kind == SWEEP, Job.state.in_(PENDING), Job.cancel_requested.is_(False), Job.worker_id.is_(None),
               is_parent(), ~_pending_children())
        .order_by(Job.created_at)
        .limit(limit)
    ))


def unclaimable(session: Session, job_id: str, delivery: Delivery | None = None) -> str | None:
    """Why `claim` would find nothing to claim now (None: it might claim the job): no such job, not queued, asked
    to cancel, or (with `delivery`) routed to another queue than the one its message came from. Read-only: the
    Celery task drops such a message without starting a job process."""
    row = session.execute(select(Job.state, Job.cancel_requested, Job.queue).where(Job.id == job_id)).first()
    if row is None:
        return "does not exist"
    state, cancel_requested, queue = row
    if state != QUEUED:
        return f"is {state}"
    if cancel_requested:
        return "is asked to cancel"
    if session.scalar(select(is_parent()).where(Job.id == job_id)):
        return "is a sweep (its cells run as jobs of their own)"
    if delivery is not None and (queue or delivery.default_queue) != delivery.queue:
        return f"was re-routed to '{queue or delivery.default_queue}'"
    return None


def heartbeat(
    session: Session,
    claim_: Claim,
    lease_s: float,
    stage: str | None,
    percent: float,
    timings: dict[str, float],
    marks: Sequence[StageMark] = (),
) -> bool | None:
    """Renew the lease, record progress and the stage marks since the last beat. Returns cancel_requested, or
    None when fenced out (nothing is written then)."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == claim_.job_id, Job.attempt == claim_.attempt, Job.state == RUNNING)
        .values(
            lease_until=now + timedelta(seconds=lease_s),
            stage=None if stage is None else stage[:STAGE_MAX_CHARS],
            progress=percent,
            stage_timings=timings,
            updated_at=now,
        )
        .returning(Job.cancel_requested)
    ).first()
    if row is not None:
        _stage_events(session, claim_, marks)
    session.commit()
    return None if row is None else bool(row[0])


def finish(
    session: Session,
    claim_: Claim,
    state: JobState,
    *,
    error: str | None = None,
    require_no_cancel: bool = False,
    marks: Sequence[StageMark] = (),
    **values: Any,
) -> bool:
    """running → terminal, only for the current attempt (with the stage marks the last heartbeat did not
    record). Returns False when fenced out."""
    now = utcnow()
    query = update(Job).where(Job.id == claim_.job_id, Job.attempt == claim_.attempt, Job.state == RUNNING)
    if require_no_cancel:
        query = query.where(Job.cancel_requested.is_(False))
    row = session.execute(
        query.values(state=state.value, error=error, finished_at=now, lease_until=None, updated_at=now, **values)
        .returning(Job.parent_id)
    ).first()
    if row is None:
        session.rollback()
        return False
    _stage_events(session, claim_, marks)
    _event(session, claim_.job_id, EventKind(state.value), claim_.attempt, state.value, detail=error, at=now)
    if row[0] is not None:
        _cell_ended(session, claim_.job_id, row[0], state.value, error, now)
    session.commit()
    return True


# -- the supervisor of a job process (fenced by the process's worker id: `host:pid`) ---------------------
def next_queued(session: Session) -> str | None:
    """The oldest queued job not asked to cancel (the embedded worker polls for it)."""
    return session.scalar(
        select(Job.id)
        .where(Job.state == QUEUED, Job.cancel_requested.is_(False), ~is_parent())
        .order_by(Job.created_at)
        .limit(1)
    )


def kill(session: Session, job_id: str, worker_suffix: str, reason: str) -> bool:
    """A supervisor killed the job's process (past its time limit, or not stopping after its cancel): running →
    failed (reason "timeout") or cancelled. `worker_suffix` ends the run's worker id."""
    now = utcnow()
    if reason == "timeout":
        values = {"state": JobState.failed.value, "error": HARD_TIMEOUT}
    else:
        values = {"state": JobState.cancelled.value, "error": CANCEL_KILLED}
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == RUNNING, Job.worker_id.endswith(worker_suffix))
        .values(**values, finished_at=now, lease_until=None, updated_at=now)
        .returning(Job.attempt, Job.parent_id)
    ).first()
    if row is not None:
        _event(session, job_id, EventKind(values["state"]), row[0], values["state"], detail=values["error"], at=now)
        if row[1] is not None:
            _cell_ended(session, job_id, row[1], values["state"], values["error"], now)
    session.commit()
    return row is not None


def requeue(session: Session, job_id: str, worker_suffix: str) -> bool:
    """Shutting down mid-job: running → queued with the attempt given back, so it runs again on the next start."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == RUNNING, Job.worker_id.endswith(worker_suffix))
        .values(
            state=QUEUED,
            attempt=Job.attempt - 1,
            worker_id=None,
            lease_until=None,
            dispatched=False,
            updated_at=utcnow(),
        )
        .returning(Job.attempt)
    ).first()
    if row is not None:
        # the event carries the attempt that was interrupted; the row gives it back
        _event(session, job_id, EventKind.requeued, row[0] + 1, QUEUED, detail="the worker shut down mid-job")
    session.commit()
    return row is not None


# -- the reaper ------------------------------------------------------------------------------------------
def expired_leases(session: Session, now: datetime, limit: int = 500) -> list[tuple[str, int]]:
    """(id, attempt) of running jobs whose lease ran out: their worker is gone."""
    rows = session.execute(
        select(Job.id, Job.attempt)
        .where(Job.state == RUNNING, or_(Job.lease_until.is_(None), Job.lease_until < now),
               or_(Job.kind != SWEEP, Job.worker_id.is_not(None)))  # a sweep waiting for its cells holds no lease
        .limit(limit)
    ).all()
    return [(job_id, attempt) for job_id, attempt in rows]


def reap(session: Session, job_id: str, attempt: int, now: datetime) -> str | None:
    """A lost attempt: failed past its time limit, cancelled if a cancel was asked, failed with no attempts
    left, otherwise queued again (undispatched). Returns the new state, or None if the row moved on."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != RUNNING or job.attempt != attempt:
        session.commit()
        return None
    lost = f"worker lost (lease expired) on attempt {attempt} of {job.max_attempts}"
    if job.kind == SWEEP and session.scalar(select(is_parent()).where(Job.id == job_id)):
        return _reap_comparison(session, job, lost, now)
    if job.started_at is not None and now - job.started_at > timedelta(seconds=job.time_limit_s):
        values: dict[str, Any] = {
            "state": JobState.failed.value, "error": f"timeout: exceeded {job.time_limit_s:g} s ({lost})"
        }
    elif job.cancel_requested:
        values = {"state": JobState.cancelled.value, "error": CANCELLED_BY_USER}
    elif attempt >= job.max_attempts:
        values = {"state": JobState.failed.value, "error": f"{lost}; no attempts left"}
    else:
        values = {"state": QUEUED, "error": None, "dispatched": False, "dispatched_at": None}
    terminal = values["state"] != QUEUED
    kind = EventKind(values["state"]) if terminal else EventKind.requeued
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.state == RUNNING)
        .values(**values, worker_id=None, lease_until=None, updated_at=now, finished_at=now if terminal else None)
        .returning(Job.parent_id)
    ).first()
    if row is None:
        session.commit()
        return None
    _event(session, job_id, kind, attempt, values["state"], detail=values["error"] or lost, at=now)
    if terminal and row[0] is not None:
        _cell_ended(session, job_id, row[0], values["state"], values["error"], now)
    session.commit()
    log.warning("job %s: %s -> %s", job_id, lost, values["state"])
    return values["state"]


def _reap_comparison(session: Session, job: Job, lost: str, now: datetime) -> str | None:
    """A sweep's comparison attempt was lost: cancelled if a cancel was asked, failed with no attempts left,
    otherwise back to waiting for a writer (running, no worker: `claim_comparison` takes it again)."""
    if job.cancel_requested:
        values: dict[str, Any] = {"state": JobState.cancelled.value, "error": CANCELLED_BY_USER, "finished_at": now}
    elif job.attempt >= job.max_attempts:
        values = {"state": JobState.failed.value, "error": f"{lost} writing the comparison; no attempts left",
                  "finished_at": now}
    else:
        values = {"state": RUNNING, "error": None}
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, Job.state == RUNNING, Job.worker_id.is_not(None))
        .values(**values, worker_id=None, lease_until=None, updated_at=now)
    )
    if not _changed(result):
        session.commit()
        return None
    state = values["state"]
    kind = EventKind.requeued if state == RUNNING else EventKind(state)
    detail = f"{lost} writing the comparison: it is written again" if state == RUNNING else values["error"]
    _event(session, job.id, kind, job.attempt, state, detail=detail, at=now)
    session.commit()
    log.warning("sweep %s: %s writing the comparison -> %s", job.id, lost, state)
    return QUEUED if state == RUNNING else state


def overdue_cancels(session: Session, grace_s: float, limit: int = 500) -> list[tuple[str, int]]:
    """(id, attempt) of running jobs asked to cancel more than grace_s ago."""
    overdue = utcnow() - timedelta(seconds=grace_s)
    rows = session.execute(
        select(Job.id, Job.attempt)
        .where(Job.state == RUNNING, Job.cancel_requested.is_(True), Job.cancel_requested_at <= overdue)
        .limit(limit)
    ).all()
    return [(job_id, attempt) for job_id, attempt in rows]


def cancel_killed(session: Session, job_id: str, attempt: int) -> bool:
    """The broker killed an overdue cancel's run: running → cancelled, for that attempt only."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.state == RUNNING)
        .values(
            state=JobState.cancelled.value, error=CANCEL_KILLED, worker_id=None, lease_until=None,
            updated_at=now, finished_at=now,
        )
        .returning(Job.parent_id)
    ).first()
    if result is None:
        session.commit()
        return False
    _event(session, job_id, EventKind.cancelled, attempt, JobState.cancelled.value, detail=CANCEL_KILLED, at=now)
    if result[0] is not None:
        _cell_ended(session, job_id, result[0], JobState.cancelled.value, CANCEL_KILLED, now)
    session.commit()
    return True


def undispatched(session: Session, grace_s: float, redispatch_after_s: float, limit: int = 500) -> list[str]:
    """Queued jobs to publish: never handed to the broker (older than the grace), or waiting suspiciously long."""
    now = utcnow()
    grace = now - timedelta(seconds=grace_s)
    stale = now - timedelta(seconds=redispatch_after_s)
    return list(
        session.scalars(
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
            .limit(limit)
        ).all()
    )


def unheld(session: Session, held: set[str], older_than_s: float, limit: int = 500) -> list[str]:
    """Queued jobs published more than older_than_s ago whose message the broker no longer holds (`held`: the
    ids it has queued or delivered); a broker restart without persistence loses them."""
    since = utcnow() - timedelta(seconds=older_than_s)
    rows = session.scalars(
        select(Job.id)
        .where(
            Job.state == QUEUED, Job.cancel_requested.is_(False), Job.dispatched.is_(True), Job.dispatched_at < since
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [job_id for job_id in rows if job_id not in held]


@dataclass(frozen=True)
class Stranded:
    """A queued job whose worker class has had no live worker since `dead_since`."""

    job_id: str
    attempt: int
    queue: str | None  # as routed (None: the default queue)
    kind: str
    spec: dict[str, Any]
    dead_since: datetime


def stranded(
    session: Session, live_queues: set[str], default_queue: str, grace_s: float, now: datetime, limit: int = 500
) -> list[Stranded]:
    """Queued jobs whose queue is not in `live_queues` and has had no live worker for `grace_s`: since its
    `worker_queues.live_until`, or, for a queue no worker ever advertised, since the job was submitted."""
    queue = func.coalesce(Job.queue, default_queue)
    rows = session.execute(
        select(Job.id, Job.attempt, Job.queue, Job.kind, Job.spec, WorkerQueue.live_until, Job.created_at)
        .outerjoin(WorkerQueue, WorkerQueue.queue == queue)
        .where(Job.state == QUEUED, Job.cancel_requested.is_(False), queue.not_in(sorted(live_queues)), ~is_parent())
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    cutoff = now - timedelta(seconds=grace_s)
    found = []
    for job_id, attempt, job_queue, kind, spec, live_until, created_at in rows:
        dead_since = live_until if live_until is not None else created_at
        if dead_since <= cutoff:
            found.append(Stranded(job_id, attempt, job_queue, kind, spec, dead_since))
    return found


def _still_stranded(job: Stranded) -> list[Any]:
    """The fence of a re-route: the job is queued, on the attempt and in the queue it was found stranded in."""
    in_queue = Job.queue.is_(None) if job.queue is None else Job.queue == job.queue
    return [Job.id == job.job_id, Job.state == QUEUED, Job.cancel_requested.is_(False), Job.attempt == job.attempt,
            in_queue]


def reroute(session: Session, job: Stranded, queue: str, spec: dict[str, Any], detail: str) -> bool:
    """A stranded job moves to a live class: queued in `queue` (with `spec`: the class's memory may become its
    budgets), undispatched, so the caller publishes it there. False when the job moved on meanwhile."""
    now = utcnow()
    result = session.execute(
        update(Job).where(*_still_stranded(job))
        .values(queue=queue, spec=spec, dispatched=False, dispatched_at=None, updated_at=now)
    )
    if not _changed(result):
        session.rollback()
        return False
    _event(session, job.job_id, EventKind.rerouted, job.attempt, QUEUED, detail=detail,
           data={"from": job.queue, "to": queue}, at=now)
    session.commit()
    return True


def fail_stranded(session: Session, job: Stranded, error: str) -> bool:
    """A stranded job no live class can run fails with `error`. False when the job moved on meanwhile."""
    now = utcnow()
    row = session.execute(
        update(Job).where(*_still_stranded(job))
        .values(state=JobState.failed.value, error=error, finished_at=now, updated_at=now)
        .returning(Job.parent_id)
    ).first()
    if row is None:
        session.rollback()
        return False
    _event(session, job.job_id, EventKind.failed, job.attempt, JobState.failed.value, detail=error, at=now)
    if row[0] is not None:
        _cell_ended(session, job.job_id, row[0], JobState.failed.value, error, now)
    session.commit()
    return True


def queued_queues(session: Session) -> set[str]:
    """The queues that queued jobs were routed to (the default queue, null, is left out)."""
    return set(session.scalars(select(Job.queue).where(Job.state == QUEUED, Job.queue.is_not(None)).distinct()))


def attempt_states(session: Session, job_ids: set[str]) -> dict[str, tuple[str, int]]:
    """(state, current attempt) of the given jobs that exist (the artifact collector's view)."""
    rows = session.execute(select(Job.id, Job.state, Job.attempt).where(Job.id.in_(list(job_ids)))).all()
    return {job_id: (state, attempt) for job_id, state, attempt in rows}

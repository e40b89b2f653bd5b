"""Job submission (idempotent, with an outbox), lookup scoped to the owner, listing, events and cancellation.

A sweep is submitted as a parent job and one `cell` job per method and sparsity (`SweepSpec.prune_spec`), each cell
routed by its own memory plan and published like a prune job; the user's quotas count the cells."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, InputRejected, NotFound, TooManyRequests
from api.services.cost import check_cost
from api.services.inputs import JobSpec, request_hash, validate_request
from service import lifecycle
from service.broker import Broker
from service.db.models import Job, JobEvent, JobKind, JobState, User
from service.routing import NoWorkerFits, Route, choose_queue
from service.settings import Settings
from service.sweeps import cells_of
from service.workers import worker_classes
from twossp_core.plan.spec import PruneSpec, SweepSpec
from twossp_core.preflight import local_config

log = logging.getLogger(__name__)
_SQLITE_SUBMIT_LOCK = threading.Lock()


def is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@dataclass
class Submission:
    job: Job
    created: bool


def submit_job(
    session: Session, broker: Broker, settings: Settings, user: User, body: Any, idempotency_key: str | None
) -> Submission:
    kind, spec = validate_request(body, settings)
    if kind is JobKind.cell:
        raise InputRejected("kind: must be one of 'prune', 'sweep', not 'cell' (a sweep's cells are submitted with "
                            "their sweep)")
    cost = check_cost(spec, settings)
    digest = request_hash(kind, spec)
    if idempotency_key is not None:
        if not (1 <= len(idempotency_key) <= 200):
            raise InputRejected("Idempotency-Key must be 1 to 200 characters")
        existing = _by_idempotency_key(session, user, idempotency_key)
        if existing is not None:
            return _replay(existing, digest)

    cells: list[Job] = []
    if isinstance(spec, SweepSpec):  # the parent runs nothing itself: each cell is routed and counted as a job
        queue, planned = None, 0
        models = spec.model_list()
        if len(models) * len(spec.methods) * len(spec.sparsities) > settings.max_sweep_runs:
            raise InputRejected(
                f"sweep: {len(models) * len(spec.methods) * len(spec.sparsities)} runs ({len(models)} models x "
                f"{len(spec.methods)} methods x {len(spec.sparsities)} sparsities) exceed "
                f"TWOSSP_MAX_SWEEP_RUNS={settings.max_sweep_runs}; split it into smaller sweeps"
            )
        for model in models:
            for method in spec.methods:
                for sparsity in spec.sparsities:
                    cell = _cell_job(session, broker, settings, user, spec.prune_spec(method, sparsity, model))
                    planned += cell.planned_tokens or 0
                    cells.append(cell)
        if len(cells) > settings.max_active_jobs_per_user:
            raise InputRejected(
                f"sweep: {len(cells)} cells, more than the {settings.max_active_jobs_per_user} jobs a user may have "
                f"queued or running (TWOSSP_MAX_ACTIVE_JOBS_PER_USER); split it into smaller sweeps"
            )
    else:
        chosen = route(session, broker, settings, spec)
        queue = chosen.queue if chosen is not None else None
        if chosen is not None and chosen.budgets:  # the class's memory becomes the job's budgets (block by block)
            spec = spec.model_copy(update=chosen.budgets)
        assert cost.tokens is not None  # check_cost refused an unbounded plan
        planned = cost.tokens
    new_jobs = len(cells) or 1
    with _submissions_of(session, user):
        if idempotency_key is not None:  # a concurrent request with the same key may have committed meanwhile
            existing = _by_idempotency_key(session, user, idempotency_key)
            if existing is not None:
                session.rollback()
                return _replay(existing, digest)
        # a sweep's cells count, its parent does not (it runs nothing itself)
        active, active_tokens = session.execute(
            select(func.count(), func.coalesce(func.sum(Job.planned_tokens), 0))
            .select_from(Job)
            .where(Job.owner_id == user.id, Job.state.in_([JobState.queued.value, JobState.running.value]),
                   ~lifecycle.is_parent())
        ).one()
        if active + new_jobs > settings.max_active_jobs_per_user:
            session.rollback()  # releases the owner's lock
            raise TooManyRequests(
                f"you have {active} jobs queued or running (TWOSSP_MAX_ACTIVE_JOBS_PER_USER="
                f"{settings.max_active_jobs_per_user})" + (f" and this sweep has {new_jobs} cells" if cells else "")
                + "; submit more once some finish",
                retry_after=max(settings.retry_after_s, 30),
            )
        if active_tokens + planned > settings.max_active_tokens_per_user:
            session.rollback()
            raise TooManyRequests(
                f"your {active} queued and running jobs plan {active_tokens:,} tokens through the model and this one "
                f"{planned:,}"
                + (f" (its {len(cells)} cells together)" if cells else "")
                + f": more than TWOSSP_MAX_ACTIVE_TOKENS_PER_USER={settings.max_active_tokens_per_user:,}"
                "; submit it once some finish",
                retry_after=max(settings.retry_after_s, 30),
            )
        job = Job(
            owner_id=user.id,
            queue=queue,
            idempotency_key=idempotency_key,
            request_hash=digest,
            kind=kind.value,
            spec=spec.model_dump(mode="json"),
            model=spec.model,
            method=spec.method if isinstance(spec, PruneSpec) else None,
            sparsity=spec.sparsity if isinstance(spec, PruneSpec) else None,
            max_attempts=settings.max_attempts,
            time_limit_s=settings.job_time_limit_s,
            planned_tokens=planned,
        )
        try:
            # the row is the outbox entry (a sweep's: its cells'): dispatched=false until the broker has it
            lifecycle.submit(session, job, cells)
        except IntegrityError:
            existing = _by_idempotency_key(session, user, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return _replay(existing, digest)
    # committed: from here on the answer is 202 with the job; a broker or database hiccup while publishing
    # leaves the row undispatched and the outbox (the reaper) publishes it
    for published in cells or [job]:
        lifecycle.dispatch(session, broker, published.id)
    return Submission(job, created=True)


def _cell_job(session: Session, broker: Broker, settings: Settings, user: User, cell: PruneSpec) -> Job:
    """One cell of a sweep as a job (not yet added): its own plan within the limits of a job, its own route."""
    cost = check_cost(cell, settings)
    chosen = route(session, broker, settings, cell)
    if chosen is not None and chosen.budgets:
        cell = cell.model_copy(update=chosen.budgets)
    return Job(
        owner_id=user.id,
        queue=chosen.queue if chosen is not None else None,
        request_hash=request_hash(JobKind.cell, cell),
        kind=JobKind.cell.value,
        spec=cell.model_dump(mode="json"),
        model=cell.model,
        method=cell.method,
        sparsity=cell.sparsity,
        max_attempts=settings.max_attempts,
        time_limit_s=settings.job_time_limit_s,
        planned_tokens=cost.tokens,
    )


def route(session: Session, broker: Broker, settings: Settings, spec: JobSpec) -> Route | None:
    """The worker class for the job: the smallest advertised class that holds its memory plan (with the budgets it
    gives the job, if any); None (the default queue) with the embedded worker or while no worker has advertised.
    InputRejected when no class can take it."""
    if broker.kind == "embedded":
        return None
    classes = worker_classes(session, settings.worker_expiry_s)
    if not classes:
        return None
    try:
        chosen = choose_queue(spec, local_config(spec.model, relative_paths=False), classes)
    except NoWorkerFits as exc:
        raise InputRejected(str(exc)) from None
    log.info("job for %s routed to queue %s%s", spec.model, chosen.queue,
             f" with budgets {chosen.budgets}" if chosen.budgets else "")
    return chosen


@contextmanager
def _submissions_of(session: Session, user: User) -> Iterator[None]:
    """One submission of a user at a time from counting their active jobs to committing the new one, so
    concurrent submissions cannot pass the cap together. On Postgres the user's row is locked (`FOR UPDATE`,
    held by the transaction that lifecycle.submit commits, every API process alike); SQLite has one API process
    (the embedded shape), where a process lock does the same."""
    if session.get_bind().dialect.name == "sqlite":
        with _SQLITE_SUBMIT_LOCK:
            yield
        return
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    try:
        yield
    except BaseException:
        session.rollback()
        raise


def _by_idempotency_key(session: Session, user: User, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == user.id, Job.idempotency_key == key))


def _replay(job: Job, digest: str) -> Submission:
    if job.request_hash != digest:
        raise InputRejected("Idempotency-Key was already used with a different request body")
    return Submission(job, created=False)


def get_job(session: Session, user: User, job_id: str) -> Job:
    if not is_job_id(job_id):  # ids are UUIDs; anything else (a NUL byte, 10 kB of text) is simply not a job
        raise NotFound(f"job {job_id[:100]!r} not found")
    job = session.get(Job, job_id)
    if job is None or job.owner_id != user.id:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session, user: User, state: JobState | None, limit: int, offset: int, kind: JobKind | None = None,
    parent_id: str | None = None,
) -> tuple[list[Job], int]:
    """The user's jobs, newest first. A sweep's cells are listed with `parent_id` (that sweep's) or `kind=cell`;
    otherwise the sweep stands for them."""
    query = select(Job).where(Job.owner_id == user.id)
    if state is not None:
        query = query.where(Job.state == state.value)
    if kind is not None:
        query = query.where(Job.kind == kind.value)
    if parent_id is not None:
        query = query.where(Job.parent_id == parent_id)
    elif kind is not JobKind.cell:
        query = query.where(Job.parent_id.is_(None))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), total


def list_events(session: Session, user: User, job_id: str, after: int, limit: int) -> tuple[list[JobEvent], bool]:
    """The job's events recorded after the cursor `after` (an event id), oldest first; and whether more follow."""
    get_job(session, user, job_id)
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(limit + 1)
    ).all()
    return list(rows[:limit]), len(rows) > limit


def sweep_cells(session: Session, jobs: list[Job]) -> dict[str, list[Job]]:
    """The cells of the sweeps among `jobs` (one query)."""
    return cells_of(session, [job.id for job in jobs if job.kind == JobKind.sweep.value])


def cancel_job(session: Session, user: User, job_id: str) -> Job:
    job = get_job(session, user, job_id)
    if job.state in (JobState.succeeded.value, JobState.failed.value):
        raise Conflict(f"job {job_id} already {job.state}")
    lifecycle.request_cancel(session, job_id)
    session.refresh(job)
    return job

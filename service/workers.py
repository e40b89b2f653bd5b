"""The worker registry: Celery workers advertise their class (queue, device, memory) in `workers`, renewed while
they run and withdrawn when they stop; the API reads the classes seen recently to route jobs
(`service/routing.py`). `worker_queues` keeps, per queue, until when it had a live worker, so the reaper knows how
long a class has been dead (`service/lifecycle.py` `stranded`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import Job, JobState, Worker, WorkerQueue
from service.db.types import utcnow
from service.routing import WorkerClass


@dataclass(frozen=True)
class Capacity:
    """What one worker offers a job: detected by the worker (`worker/advertise.py`), advertised in its rows, and
    the cap on the budgets of the jobs it runs (`worker/runner.py`)."""

    device: str  # "cuda" or "cpu"
    memory: int  # the GPU's (cuda; each GPU's) or the host's (cpu)
    host_memory: int
    gpus: int = 1  # GPUs a job may spread over (cuda)

    def worker_class(self, queue: str) -> WorkerClass:
        """The class of a queue served by this worker alone."""
        return WorkerClass(queue, self.device, self.memory, self.host_memory, gpus=self.gpus)


@dataclass(frozen=True)
class Advertisement:
    name: str  # the Celery node name
    queue: str
    capacity: Capacity


def advertise(session: Session, ad: Advertisement, expiry_s: float) -> None:
    """Insert or renew the worker's row and its queue's `live_until`, and forget rows nobody renewed for
    `expiry_s`."""
    now = utcnow()
    cap = ad.capacity
    values = {"device": cap.device, "memory": cap.memory, "host_memory": cap.host_memory, "gpus": cap.gpus,
              "last_seen": now}
    renewed = session.execute(
        update(Worker).where(Worker.name == ad.name, Worker.queue == ad.queue).values(**values)
    ).rowcount
    if not renewed:
        try:
            with session.begin_nested():
                session.add(Worker(name=ad.name, queue=ad.queue, started_at=now, **values))
        except IntegrityError:  # inserted meanwhile (a second advertiser of the same name)
            session.execute(update(Worker).where(Worker.name == ad.name, Worker.queue == ad.queue).values(**values))
    _set_live_until(session, ad.queue, now + timedelta(seconds=expiry_s))
    session.execute(delete(Worker).where(Worker.last_seen < now - timedelta(seconds=expiry_s)))
    session.commit()


def _set_live_until(session: Session, queue: str, until: datetime) -> None:
    """The queue had a live worker until `until` (a later time already recorded stays)."""
    if session.execute(update(WorkerQueue).where(WorkerQueue.queue == queue).values(live_until=until)).rowcount:
        return
    try:
        with session.begin_nested():
            session.add(WorkerQueue(queue=queue, live_until=until))
    except IntegrityError:  # inserted meanwhile by another worker of the queue
        session.execute(update(WorkerQueue).where(WorkerQueue.queue == queue).values(live_until=until))


def withdraw(session: Session, name: str, queues: list[str], expiry_s: float) -> int:
    """Delete the worker's rows (it stops): jobs are no longer routed to a class it alone served, and a queue left
    without a live worker is dead from now on. Returns the rows deleted."""
    now = utcnow()
    deleted = session.execute(delete(Worker).where(Worker.name == name, Worker.queue.in_(queues))).rowcount
    served = set(session.scalars(
        select(Worker.queue).where(Worker.queue.in_(queues), Worker.last_seen >= now - timedelta(seconds=expiry_s))
    ))
    dead = [queue for queue in queues if queue not in served]
    if dead:
        session.execute(
            update(WorkerQueue).where(WorkerQueue.queue.in_(dead), WorkerQueue.live_until > now).values(live_until=now)
        )
    session.commit()
    return int(deleted or 0)


def worker_classes(session: Session, expiry_s: float) -> list[WorkerClass]:
    """The classes of the workers seen within `expiry_s`, one per queue. Workers of one queue that advertise
    different figures count with the least of each (a job in the queue may land on any of them; GPUs included), and
    as `cpu` unless all of them have a GPU."""
    since = utcnow() - timedelta(seconds=expiry_s)
    rows = session.scalars(select(Worker).where(Worker.last_seen >= since).order_by(Worker.queue)).all()
    by_queue: dict[str, list[Worker]] = {}
    for row in rows:
        by_queue.setdefault(row.queue, []).append(row)
    classes = []
    for queue, workers in by_queue.items():
        device = "cuda" if all(w.device == "cuda" for w in workers) else "cpu"
        if device == "cpu":
            memory = min(w.memory if w.device == "cpu" else w.host_memory for w in workers)
        else:
            memory = min(w.memory for w in workers)
        host = min(w.host_memory for w in workers)
        gpus = min(w.gpus for w in workers) if device == "cuda" else 1
        classes.append(WorkerClass(queue, device, memory, host, workers=len(workers), gpus=gpus))
    return classes


@dataclass(frozen=True)
class ClassStatus:
    """A worker class as `/readyz` reports it: its live workers and the jobs queued for it."""

    queue: str
    live_workers: int
    queued: int
    oldest_queued_s: float | None  # age of its oldest queued job (since submission); None when none is queued


def class_statuses(session: Session, expiry_s: float, default_queue: str) -> list[ClassStatus]:
    """Every queue with a live worker or a queued job (a job routed to no class counts in `default_queue`), by
    name."""
    now = utcnow()
    since = now - timedelta(seconds=expiry_s)
    live: dict[str, int] = {
        name: count for name, count in session.execute(
            select(Worker.queue, func.count()).where(Worker.last_seen >= since).group_by(Worker.queue)
        )
    }
    queue = func.coalesce(Job.queue, default_queue)
    queued = {
        name: (count, oldest)
        for name, count, oldest in session.execute(
            select(queue, func.count(), func.min(Job.created_at))
            .where(Job.state == JobState.queued.value, Job.cancel_requested.is_(False))
            .group_by(queue)
        )
    }
    statuses = []
    for name in sorted({*live, *queued}):
        count, oldest = queued.get(name, (0, None))
        age = None if oldest is None else round(max((now - oldest).total_seconds(), 0.0), 1)
        statuses.append(ClassStatus(name, int(live.get(name, 0)), int(count), age))
    return statuses

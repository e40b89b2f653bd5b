"""The worker registry: Celery workers advertise their class (queue, device, memory) in `workers`, renewed while
they run and withdrawn when they stop; the API reads the classes seen recently to route jobs
(`service/routing.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import Worker
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
    """Insert or renew the worker's row, and forget rows nobody renewed for `expiry_s`."""
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
    session.execute(delete(Worker).where(Worker.last_seen < now - timedelta(seconds=expiry_s)))
    session.commit()


def withdraw(session: Session, name: str, queues: list[str]) -> int:
    """Delete the worker's rows (it stops): jobs are no longer routed to a class it alone served. Returns the rows
    deleted."""
    deleted = session.execute(delete(Worker).where(Worker.name == name, Worker.queue.in_(queues))).rowcount
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

"""The worker registry: Celery workers advertise their class (queue, device, memory) in `workers`, renewed while
they run; the API reads the classes seen recently to route jobs (`service/routing.py`)."""

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
class Advertisement:
    name: str  # the Celery node name
    queue: str
    device: str  # "cuda" or "cpu"
    memory: int  # the GPU's (each GPU's) or the host's
    host_memory: int
    gpus: int = 1  # GPUs a job may spread over (cuda)


def advertise(session: Session, ad: Advertisement, expiry_s: float) -> None:
    """Insert or renew the worker's row, and forget rows nobody renewed for `expiry_s`."""
    now = utcnow()
    values = {"device": ad.device, "memory": ad.memory, "host_memory": ad.host_memory, "gpus": ad.gpus,
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

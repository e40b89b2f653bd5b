"""Tables: users, their API keys (hashed), jobs, job events, workers, worker queues and shared artifacts. The job row
is the source of truth for a job; its events are the append-only history of how it got there; a worker row is what a
running Celery worker advertises (its queue and memory), renewed while it runs; a worker queue row says until when a
queue had a live worker; a shared artifact row says when a shared dense artifact was last used."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.db.types import UTCDateTime, utcnow
from service.records import ArtifactRecord

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobKind(enum.StrEnum):
    prune = "prune"
    sweep = "sweep"  # a parent job: one `cell` child per method and sparsity, and the comparison of their results
    cell = "cell"  # one method at one sparsity of a sweep (`parent_id`: the sweep)


class EventKind(enum.StrEnum):
    submitted = "submitted"
    dispatched = "dispatched"
    # published again while queued: its message was lost, or no worker claimed it for redispatch_after_s
    republished = "republished"
    started = "started"  # an attempt claimed the job (detail: the worker)
    stage_started = "stage_started"
    stage_finished = "stage_finished"  # data: {"seconds": ...}
    cancel_requested = "cancel_requested"
    requeued = "requeued"  # the attempt was lost or given back (detail: why)
    rerouted = "rerouted"  # a queued job moved to another worker class (detail: why; data: {"from", "to"})
    succeeded = "succeeded"
    failed = "failed"  # detail: the error
    cancelled = "cancelled"  # detail: how
    # a sweep's cell ended (recorded on the sweep; detail: the cell and how it ended; data: {"cell", "state"})
    cell_ended = "cell_ended"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


def new_id() -> str:
    return str(uuid.uuid4())


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="user")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    user: Mapped[User] = relationship(back_populates="keys")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_state_created", "owner_id", "state", "created_at"),
        Index("ix_jobs_state_lease", "state", "lease_until"),
        Index("ix_jobs_state_dispatched", "state", "dispatched"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))

    # prune: one method at one sparsity; sweep: methods x sparsities (method and sparsity are null, see spec), the
    # parent of one `cell` job per method and sparsity; cell: one of them (method and sparsity set)
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.prune.value, server_default=JobKind.prune.value)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(1000))
    method: Mapped[str | None] = mapped_column(String(50), nullable=True)
    sparsity: Mapped[float | None] = mapped_column(Float, nullable=True)

    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    stage: Mapped[str | None] = mapped_column(String(50), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage_timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    # execution: attempt fences stale workers; lease_until is renewed by the running worker's heartbeat
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    time_limit_s: Mapped[float] = mapped_column(Float)
    # the planned work (twossp_core.plan.cost: tokens through the model), counted against the owner's quota; null for
    # jobs submitted before it was recorded
    planned_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    # a cell: the sweep it belongs to (the cell's state changes move the sweep's, service/lifecycle.py)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True, index=True
    )

    # the worker queue (class) the job was routed to; null: the default queue (`celery_queue`)
    queue: Mapped[str | None] = mapped_column(String(200), nullable=True)

    # outbox: committed with the row, set once the broker accepted the message
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    artifact: Mapped[ArtifactRecord | None] = mapped_column(JSON, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobEvent(Base):
    """One entry of a job's history, written in the same transaction as the transition it records."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # the order of recording
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # when it happened
    kind: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # the job's state after the event
    stage: Mapped[str | None] = mapped_column(String(50), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Worker(Base):
    """A Celery worker's advertisement: the queue it consumes (its class), what its jobs compute on and the memory
    it offers them. Renewed every `worker_advertise_interval_s`; rows unseen for `worker_expiry_s` are ignored."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(8))  # "cuda" or "cpu"
    memory: Mapped[int] = mapped_column(BigInteger)  # bytes: the GPU's (cuda) or the host's (cpu)
    host_memory: Mapped[int] = mapped_column(BigInteger)  # bytes of host memory
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # GPUs a job may spread over
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WorkerQueue(Base):
    """A queue (worker class) that workers have advertised, and until when it had a live worker: the expiry of its
    latest advertisement, or the moment its last worker withdrew. Jobs queued there wait `worker_class_grace_s`
    past it before they are re-routed (`service/lifecycle.py` `stranded`)."""

    __tablename__ = "worker_queues"

    queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    live_until: Mapped[datetime] = mapped_column(UTCDateTime())


class SharedArtifact(Base):
    """A shared dense artifact in the artifact store (`shared/<key>`, worker/shared.py): when it was stored and when a
    cell last read or wrote it. The reaper deletes the artifacts unused for `shared_artifact_ttl_days`; an artifact
    the store holds without a row (stored before rows were kept) gets one, used when the reaper first finds it."""

    __tablename__ = "shared_artifacts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # the content key (sha256 hex)
    kind: Mapped[str | None] = mapped_column(String(100), nullable=True)  # dense, control, or the statistic
    total_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by_job: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    reads: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times a cell reused it

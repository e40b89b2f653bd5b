"""Claims, heartbeats, fencing and the reaper, on Postgres, without running a model."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from api.services.jobs import cancel_job, submit_job
from service import lifecycle
from service.broker import CeleryBroker, EmbeddedBroker
from service.db.models import Job, JobEvent, JobState
from service.db.session import Database
from service.db.types import utcnow
from service.keys import create_key, user_for_key
from service.records import StageMark
from service.settings import Settings
from worker.maintenance import run_maintenance

from .support import job_body


@pytest.fixture
def env(tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, stories_model: Path, stories_text: Path):
    settings = Settings(
        data_dir=tmp_path, database_url=pg_url, broker_url=redis_url, allowed_local_roots=[test_data],
        max_attempts=2, lease_seconds=30, dispatch_grace_s=0,
    )
    db = Database(settings)
    broker = CeleryBroker(redis_url, settings.celery_queue)
    with db.session() as session:
        user = user_for_key(session, create_key(session, "alice"))
        job = submit_job(session, broker, settings, user, job_body(stories_model, stories_text), None).job
    yield settings, db, broker, job.id
    broker.close()
    db.dispose()


def expire(db: Database, job_id: str, started_ago_s: float = 1.0) -> None:
    with db.session() as session:
        now = utcnow()
        session.execute(
            update(Job).where(Job.id == job_id).values(
                lease_until=now - timedelta(seconds=1), started_at=now - timedelta(seconds=started_ago_s)
            )
        )
        session.commit()


def state(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_claim_is_exclusive_and_attempts_fence_stale_workers(env) -> None:
    settings, db, broker, job_id = env
    with db.session() as session:
        first = lifecycle.claim(session, job_id, "w1", 30)
        assert first is not None and first.attempt == 1
        assert lifecycle.claim(session, job_id, "w2", 30) is None  # already running
        assert lifecycle.heartbeat(session, first, 30, "stage1", 40.0, {"load": 1.0}) is False
    assert state(db, job_id).stage == "stage1"

    expire(db, job_id)
    assert run_maintenance(db, broker, settings).requeued == [job_id]
    with db.session() as session:
        second = lifecycle.claim(session, job_id, "w2", 30)
        assert second is not None and second.attempt == 2
        # the first worker comes back: it is fenced out of every write
        assert lifecycle.heartbeat(session, first, 30, "stage2", 90.0, {}) is None
        assert not lifecycle.finish(session, first, JobState.succeeded)
        assert lifecycle.finish(session, second, JobState.failed, error="boom")
    job = state(db, job_id)
    assert job.state == "failed" and job.error == "boom" and job.attempt == 2


def test_reaper_fails_after_the_attempt_limit(env) -> None:
    settings, db, broker, job_id = env
    for attempt in (1, 2):
        with db.session() as session:
            assert lifecycle.claim(session, job_id, f"w{attempt}", 30).attempt == attempt
        expire(db, job_id)
        run_maintenance(db, broker, settings)
    job = state(db, job_id)
    assert job.state == "failed"
    assert "lease expired" in job.error and "no attempts left" in job.error
    assert job.finished_at is not None


def test_reaper_fails_jobs_past_their_time_limit_with_timeout(env) -> None:
    settings, db, broker, job_id = env
    with db.session() as session:
        lifecycle.claim(session, job_id, "w1", 30)
    expire(db, job_id, started_ago_s=settings.job_time_limit_s + 5)
    result = run_maintenance(db, broker, settings)
    assert result.failed == [job_id]
    assert state(db, job_id).error.startswith("timeout")


def test_cancel_requested_on_a_lost_job_ends_cancelled(env) -> None:
    settings, db, broker, job_id = env
    with db.session() as session:
        claim = lifecycle.claim(session, job_id, "w1", 30)
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
        assert lifecycle.heartbeat(session, claim, 30, None, 0.0, {}) is True
    expire(db, job_id)
    assert run_maintenance(db, broker, settings).cancelled == [job_id]
    assert state(db, job_id).state == "cancelled"


def test_a_running_job_not_stopping_after_its_cancel_is_killed_once_the_grace_is_over(env) -> None:
    settings, db, broker, job_id = env
    with db.session() as session:
        claim = lifecycle.claim(session, job_id, "w1", 30)
        cancel_job(session, user_for_key(session, create_key(session, "alice")), job_id)  # the API's cancel
        assert lifecycle.heartbeat(session, claim, 30, "calibration", 10.0, {}) is True  # still running, told
    assert run_maintenance(db, broker, settings).cancelled == []  # within the grace: the job may still stop
    with db.session() as session:
        asked = utcnow() - timedelta(seconds=settings.cancel_grace_s + 1)
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=asked))
        session.commit()
    # its supervisor kills it at the grace; the reaper only ends one whose supervisor did not, a lease later
    assert run_maintenance(db, broker, settings).cancelled == []
    with db.session() as session:
        asked = utcnow() - timedelta(seconds=settings.cancel_grace_s + settings.lease_seconds + 1)
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=asked))
        session.commit()
    # the embedded broker cannot reach a worker process; its embedded worker kills its own child instead
    assert run_maintenance(db, EmbeddedBroker(), settings).cancelled == []
    assert state(db, job_id).state == "running"
    assert run_maintenance(db, broker, settings).cancelled == [job_id]  # revoked through the broker
    job = state(db, job_id)
    assert job.state == "cancelled" and "killed" in job.error and job.finished_at is not None
    with db.session() as session:
        assert not lifecycle.finish(session, claim, JobState.succeeded)  # the killed attempt is fenced out


def test_a_claim_records_the_worker_time_limit_when_smaller(env) -> None:
    settings, db, broker, job_id = env
    with db.session() as session:
        claim = lifecycle.claim(session, job_id, "w1", 30, time_limit_s=5)
    assert claim.time_limit_s == 5 and state(db, job_id).time_limit_s == 5
    expire(db, job_id, started_ago_s=10)
    assert run_maintenance(db, broker, settings).failed == [job_id]
    assert state(db, job_id).error.startswith("timeout")


def history(db: Database, job_id: str) -> list[tuple[str, int, str | None]]:
    with db.session() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        return [(e.kind, e.attempt, e.stage) for e in rows]


def test_every_transition_and_stage_mark_is_recorded_once_and_only_for_the_current_attempt(env) -> None:
    settings, db, broker, job_id = env
    now = utcnow()
    with db.session() as session:
        first = lifecycle.claim(session, job_id, "w1", 30)
        marks = [StageMark("stage_started", "load", now), StageMark("stage_finished", "load", now, 0.5)]
        assert lifecycle.heartbeat(session, first, 30, "load", 5.0, {}, marks) is False
    expire(db, job_id)
    assert run_maintenance(db, broker, settings).requeued == [job_id]
    with db.session() as session:
        second = lifecycle.claim(session, job_id, "w2", 30)
        # the stale attempt's marks are dropped with the rest of its writes
        stale = [StageMark("stage_started", "stage1", now)]
        assert lifecycle.heartbeat(session, first, 30, "stage1", 50.0, {}, stale) is None
        assert not lifecycle.finish(session, first, JobState.succeeded, marks=stale)
        load = [StageMark("stage_started", "load", now)]
        assert lifecycle.heartbeat(session, second, 30, "load", 5.0, {}, load) is False
        done = [StageMark("stage_finished", "load", now, 1.0), StageMark("stage_started", "upload", now)]
        assert lifecycle.finish(session, second, JobState.succeeded, marks=done)
    assert history(db, job_id) == [
        ("submitted", 0, None), ("dispatched", 0, None),
        ("started", 1, None), ("stage_started", 1, "load"), ("stage_finished", 1, "load"),
        ("requeued", 1, None), ("dispatched", 1, None),
        ("started", 2, None), ("stage_started", 2, "load"), ("stage_finished", 2, "load"),
        ("stage_started", 2, "upload"), ("succeeded", 2, None),
    ]


def test_cancelling_a_queued_job_and_shutting_down_mid_job_are_recorded(env) -> None:
    settings, db, broker, job_id = env
    with db.session() as session:
        claim = lifecycle.claim(session, job_id, "host:41", 30)
        assert not lifecycle.requeue(session, job_id, ":42")  # another child's id: fenced
        assert lifecycle.requeue(session, job_id, ":41")  # the embedded worker shuts down: the attempt goes back
        assert claim is not None and state(db, job_id).attempt == 0
        cancel_job(session, user_for_key(session, create_key(session, "alice")), job_id)
        cancel_job(session, user_for_key(session, create_key(session, "alice")), job_id)  # twice: one event
    assert state(db, job_id).state == "cancelled"
    assert [kind for kind, _, _ in history(db, job_id)] == [
        "submitted", "dispatched", "started", "requeued", "cancelled"
    ]

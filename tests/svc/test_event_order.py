"""A job's events have one order, the database's (their ids): times never go back along it, a stage mark the
worker reports at its next heartbeat is recorded then (its own time kept in data.worker_at), and a job the outbox
publishes again shows "republished", not a second "dispatched". On Postgres, without running a model."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from api.services.jobs import submit_job
from service import lifecycle
from service.broker import EmbeddedBroker
from service.db.models import JobEvent
from service.db.session import Database
from service.db.types import utcnow
from service.keys import create_key, user_for_key
from service.records import StageMark
from service.settings import Settings

from .support import job_body


def events(db: Database, job_id: str) -> list[JobEvent]:
    with db.session() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_events_have_one_order_around_a_cancel_and_a_republish_says_so(
    tmp_path: Path, pg_url: str, test_data: Path, stories_model: Path, stories_text: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url, allowed_local_roots=[test_data], dispatch_grace_s=0)
    db = Database(settings)
    broker = EmbeddedBroker()
    try:
        with db.session() as session:
            user = user_for_key(session, create_key(session, "alice"))
            job_id = submit_job(session, broker, settings, user, job_body(stories_model, stories_text), None).job.id
        with db.session() as session:  # no worker took it: the outbox publishes it again
            assert lifecycle.dispatch(session, broker, job_id)
            claim = lifecycle.claim(session, job_id, "w1", lease_s=60)
        assert claim is not None

        # the worker saw stage1 finish, then the user cancelled, then the worker's heartbeat reported the stage
        seen = utcnow() - timedelta(seconds=5)
        marks = [StageMark("stage_started", "stage1", seen - timedelta(seconds=1), percent=0.0),
                 StageMark("stage_finished", "stage1", seen, seconds=1.0, percent=25.0)]
        with db.session() as session:
            lifecycle.request_cancel(session, job_id)
        with db.session() as session:
            assert lifecycle.heartbeat(session, claim, 60, "stage2", 25.0, {"stage1_s": 1.0}, marks) is True
    finally:
        db.dispose()
        broker.close()

    history = events(Database(settings), job_id)
    kinds = [e.kind for e in history]
    assert kinds == ["submitted", "dispatched", "republished", "started", "cancel_requested",
                     "stage_started", "stage_finished"], kinds
    assert "published again" in history[2].detail
    assert [e.at for e in history] == sorted(e.at for e in history)  # one order: ids and times agree
    finished = history[-1]
    assert finished.data["worker_at"] == seen.isoformat() and finished.at > seen

"""A worker class whose workers are all gone: routing stops choosing it, the jobs queued for it move to a live class
that holds them (or fail naming the class they need) once it has been dead for the grace, every move is fenced, a
message left in the dead class's queue claims nothing when the class comes back, and /readyz reports each class."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.services.jobs import submit_job
from service import lifecycle
from service.broker import CeleryBroker
from service.db.models import Job, JobEvent, User, Worker, WorkerQueue
from service.db.session import Database
from service.db.types import utcnow
from service.keys import create_key as new_key
from service.keys import user_for_key
from service.settings import Settings
from service.workers import Advertisement, Capacity, advertise, class_statuses, withdraw
from worker.maintenance import MaintenanceResult, run_maintenance

from .procs import Api, Proc, create_key, start_api, start_reaper, start_worker, wait_until
from .test_routing import host_need, large_body, queued_ids, small_body

GRACE_S = 5.0
EXPIRY_S = 3.0


@dataclass
class Cluster:
    settings: Settings
    db: Database
    broker: CeleryBroker
    redis: redis.Redis
    user: User
    small: dict[str, Any]  # a job body the small class holds
    large: dict[str, Any]  # a job body only the large class holds
    memory: dict[str, int]  # each class's memory

    def advertise(self, queue: str) -> None:
        with self.db.session() as session:
            ad = Advertisement(f"w-{queue}@h", queue, Capacity("cpu", self.memory[queue], self.memory[queue]))
            advertise(session, ad, self.settings.worker_expiry_s)

    def die(self, queue: str, seconds_ago: float) -> None:
        """The class's workers were killed with their advertiser: their rows were last renewed long enough ago
        that the class has been dead (its advertisement expired) for `seconds_ago`."""
        last_seen = utcnow() - timedelta(seconds=seconds_ago + self.settings.worker_expiry_s)
        with self.db.session() as session:
            session.execute(update(Worker).where(Worker.queue == queue).values(last_seen=last_seen))
            session.execute(update(WorkerQueue).where(WorkerQueue.queue == queue)
                            .values(live_until=last_seen + timedelta(seconds=self.settings.worker_expiry_s)))
            session.commit()

    def submit(self, body: dict[str, Any]) -> Job:
        with self.db.session() as session:
            user = session.get(User, self.user.id)
            assert user is not None
            job = submit_job(session, self.broker, self.settings, user, body, None).job
            session.expunge(job)
            return job

    def job(self, job_id: str) -> Job:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        with self.db.session() as session:
            return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def maintain(self) -> MaintenanceResult:
        return run_maintenance(self.db, self.broker, self.settings)


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, stories_model: Path,
            stories_text: Path) -> Iterator[Cluster]:
    settings = Settings(
        data_dir=tmp_path, database_url=pg_url, broker_url=redis_url, allowed_local_roots=[test_data],
        dispatch_grace_s=60, worker_advertise_interval_s=1, worker_expiry_s=EXPIRY_S, worker_class_grace_s=GRACE_S,
    )
    small, large = small_body(stories_model, stories_text), large_body(stories_model, stories_text)
    small_need, large_need = host_need(small), host_need(large)
    db = Database(settings)
    broker = CeleryBroker(redis_url, settings.celery_queue)
    client = redis.Redis.from_url(redis_url)
    with db.session() as session:
        user = user_for_key(session, new_key(session, "alice"))
        assert user is not None
        session.expunge(user)
    memory = {"small": (small_need + large_need) // 2, "large": large_need + 200 * 10**6}
    yield Cluster(settings, db, broker, client, user, small, large, memory)
    client.close()
    broker.close()
    db.dispose()


def test_jobs_stranded_in_a_dead_class_move_to_a_live_class_that_holds_them(cluster: Cluster) -> None:
    cluster.advertise("small")
    cluster.advertise("large")
    stranded = cluster.submit(cluster.small)
    assert stranded.queue == "small"
    assert queued_ids(cluster.redis, "small") == [stranded.id]

    # the small class is dead, but not for the grace yet: nothing moves; routing already avoids it
    cluster.die("small", seconds_ago=GRACE_S - 2)
    assert cluster.maintain().rerouted == []
    later = cluster.submit(cluster.small)
    assert later.queue == "large"  # the only live class that holds it
    assert cluster.job(stranded.id).queue == "small"

    # past the grace: re-routed to `large`, published there, with the reason in its history
    cluster.die("small", seconds_ago=GRACE_S + 1)
    result = cluster.maintain()
    assert result.rerouted == [stranded.id] and stranded.id in result.dispatched
    moved = cluster.job(stranded.id)
    assert moved.queue == "large" and moved.state == "queued" and moved.dispatched
    assert stranded.id in queued_ids(cluster.redis, "large")
    event = cluster.events(stranded.id)[-2]  # then `dispatched`
    assert event.kind == "rerouted" and event.data == {"from": "small", "to": "large"}
    assert "worker class 'small' has had no live worker since" in (event.detail or "")
    assert event.detail.endswith("re-routed to 'large'")
    assert [e.kind for e in cluster.events(stranded.id)] == ["submitted", "dispatched", "rerouted", "dispatched"]
    assert cluster.maintain().rerouted == []  # moved once

    # the message left in `small` claims nothing when a small worker comes back; the one in `large` claims it
    assert queued_ids(cluster.redis, "small") == [stranded.id]
    with cluster.db.session() as session:
        default = cluster.settings.celery_queue
        assert lifecycle.claim(session, stranded.id, "h:1", 60, delivery=lifecycle.Delivery("small", default)) is None
        claim = lifecycle.claim(session, stranded.id, "h:2", 60, delivery=lifecycle.Delivery("large", default))
        assert claim is not None and claim.attempt == 1


def test_a_stranded_job_no_live_class_holds_fails_naming_the_class_it_needs(cluster: Cluster) -> None:
    cluster.advertise("small")
    cluster.advertise("large")
    needs_large = cluster.submit(cluster.large)
    assert needs_large.queue == "large"
    cluster.die("large", seconds_ago=GRACE_S + 1)
    result = cluster.maintain()
    assert result.failed == [needs_large.id] and result.rerouted == []
    job = cluster.job(needs_large.id)
    assert job.state == "failed" and job.finished_at is not None
    assert job.error is not None and job.error.startswith("worker class 'large' has had no live worker since")
    assert "and no live worker class can run the job: no worker class has the memory for this job" in job.error
    assert "the largest worker class is 'small'" in job.error
    last = cluster.events(needs_large.id)[-1]
    assert (last.kind, last.state, last.detail) == ("failed", "failed", job.error)


def test_while_no_class_has_a_live_worker_queued_jobs_wait(cluster: Cluster) -> None:
    cluster.advertise("small")
    waiting = cluster.submit(cluster.small)
    cluster.die("small", seconds_ago=GRACE_S + 60)
    result = cluster.maintain()
    assert result.rerouted == [] and result.failed == []
    assert cluster.job(waiting.id).state == "queued"
    # a job submitted now goes to the default queue (no class is live) and waits there; once a class is live
    # again the default queue counts as dead since the job's submission, so it moves after the grace
    orphan = cluster.submit(cluster.small)
    assert orphan.queue is None
    cluster.advertise("large")
    assert cluster.maintain().rerouted == [waiting.id]  # `small` died long ago; `orphan` is younger than the grace
    with cluster.db.session() as session:
        session.execute(update(Job).where(Job.id == orphan.id)
                        .values(created_at=utcnow() - timedelta(seconds=GRACE_S + 1)))
        session.commit()
    assert cluster.maintain().rerouted == [orphan.id]
    assert cluster.job(orphan.id).queue == "large"


def test_a_reroute_is_fenced(cluster: Cluster) -> None:
    cluster.advertise("small")
    cluster.advertise("large")
    job = cluster.submit(cluster.small)
    cluster.die("small", seconds_ago=GRACE_S + 1)
    with cluster.db.session() as session:
        (found,) = lifecycle.stranded(session, {"large"}, cluster.settings.celery_queue, GRACE_S, utcnow())
        # claimed meanwhile (a small worker came back and took its message): the move is refused
        assert lifecycle.claim(session, job.id, "h:1", 60) is not None
        assert not lifecycle.reroute(session, found, "large", found.spec, "late")
        assert not lifecycle.fail_stranded(session, found, "late")
    assert cluster.job(job.id).state == "running" and cluster.job(job.id).queue == "small"
    assert "rerouted" not in [e.kind for e in cluster.events(job.id)]


def test_a_withdrawn_class_is_dead_from_the_moment_its_last_worker_left(cluster: Cluster) -> None:
    cluster.advertise("small")
    with cluster.db.session() as session:
        ad = Advertisement("w2-small@h", "small", Capacity("cpu", 10**9, 10**9))
        advertise(session, ad, EXPIRY_S)
        assert withdraw(session, "w-small@h", ["small"], EXPIRY_S) == 1
        alive = session.scalar(select(WorkerQueue.live_until).where(WorkerQueue.queue == "small"))
        assert alive is not None and alive > utcnow()  # another worker still serves it
        before = utcnow()
        assert withdraw(session, "w2-small@h", ["small"], EXPIRY_S) == 1
        dead = session.scalar(select(WorkerQueue.live_until).where(WorkerQueue.queue == "small"))
        assert dead is not None and before <= dead <= utcnow()


def test_readiness_reports_each_class_and_fails_while_queued_jobs_have_no_live_worker(cluster: Cluster) -> None:
    from api.app import create_app

    cluster.advertise("small")
    cluster.advertise("large")
    job = cluster.submit(cluster.small)
    with TestClient(create_app(cluster.settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        classes = ready.json()["classes"]
        assert classes["large"] == {"live_workers": 1, "queued": 0, "oldest_queued_s": None}
        assert classes["small"]["live_workers"] == 1 and classes["small"]["queued"] == 1
        assert classes["small"]["oldest_queued_s"] >= 0

        cluster.die("small", seconds_ago=1)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["classes"]["small"]["live_workers"] == 0 and body["classes"]["small"]["queued"] == 1
        assert body["checks"]["workers"].startswith("error: queued jobs whose worker class has no live worker: "
                                                    "1 in 'small'")
        assert f"failed, {GRACE_S:g} s after their class's last worker" in body["checks"]["workers"]

        cluster.die("small", seconds_ago=GRACE_S + 1)
        assert cluster.maintain().rerouted == [job.id]
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["classes"]["large"]["queued"] == 1
    with cluster.db.session() as session:
        statuses = {s.queue: s for s in class_statuses(session, EXPIRY_S, cluster.settings.celery_queue)}
    assert statuses["large"].queued == 1 and "small" not in statuses  # dead and nothing queued: not listed


# ---- real Celery workers: one class killed with SIGKILL -------------------------------------------------------
@pytest.mark.slow
def test_a_killed_class_s_jobs_finish_on_the_other_class_or_fail_with_the_reason(
    tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, stories_model: Path, stories_text: Path
) -> None:
    """One Celery worker per class; every process of the small class (its advertiser included) is killed with
    SIGKILL, so its rows stay until they expire. Jobs routed to it meanwhile run on the large class within
    expiry + grace + 30 s; when a small worker comes back, their old messages are dropped, not run twice. Then the
    large class is killed: a job only it holds fails with the reason."""
    logs = tmp_path / "logs"
    logs.mkdir()
    interval, expiry, grace = 1.0, 3.0, 4.0
    settings = Settings(
        data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url, allowed_local_roots=[test_data],
        torch_threads=1, reaper_interval_s=0.5, dispatch_grace_s=1, worker_advertise_interval_s=interval,
        worker_expiry_s=expiry, worker_class_grace_s=grace,
    )
    small, large = small_body(stories_model, stories_text), large_body(stories_model, stories_text)
    memory = {"small": (host_need(small) + host_need(large)) // 2, "large": host_need(large) + 200 * 10**6}
    procs: dict[str, Proc] = {}

    def worker(queue: str) -> Proc:
        proc = start_worker(settings, logs, queue=queue, TWOSSP_WORKER_DEVICE="cpu",
                            TWOSSP_WORKER_MEMORY=str(memory[queue]))
        procs[f"{queue}-{len(procs)}"] = proc
        proc.wait_for_output("advertised worker", timeout=60)
        return proc

    try:
        procs["api"], base = start_api(settings, logs)
        alice = Api(base, create_key(settings, "alice"))
        procs["reaper"] = start_reaper(settings, logs)
        small_worker, large_worker = worker("small"), worker("large")

        small_worker.kill(signal.SIGKILL)  # the worker, its pool and its advertiser: nobody withdraws its row
        killed = time.monotonic()
        submitted = [alice.submit({**small, "seed": seed}) for seed in (1, 2)]
        assert all(r.status_code == 202 for r in submitted), [r.text for r in submitted]
        ids = [r.json()["id"] for r in submitted]
        assert [r.json()["queue"] for r in submitted] == ["small", "small"]  # its advertisement has not expired

        # recovery: within expiry + grace + 30 s every job was moved to the large class and the first one runs there
        # (the large worker runs one job at a time, each as long as this shared machine's load makes it)
        wait_until(lambda: all(alice.job(j)["queue"] == "large" for j in ids) and any(
            alice.job(j)["state"] != "queued" for j in ids), expiry + grace + 30, "the jobs to move and start")
        recovered = time.monotonic() - killed
        jobs = [alice.wait_done(job_id, timeout=240) for job_id in ids]
        print(f"small class killed: its {len(ids)} queued jobs moved to 'large' and the first started "
              f"{recovered:.1f} s after the kill; both succeeded {time.monotonic() - killed:.1f} s after it "
              f"(expiry {expiry:g} s, grace {grace:g} s)")
        assert all(job["state"] == "succeeded" and job["queue"] == "large" for job in jobs), jobs
        for job_id in ids:
            assert job_id in large_worker.output()
            kinds = [e["kind"] for e in alice.events(job_id)]
            assert kinds.count("rerouted") == 1 and kinds.count("started") == 1, kinds
        after = alice.submit({**small, "seed": 3}).json()
        assert after["queue"] == "large"  # routing no longer chooses the dead class

        # the small class comes back: the messages left in its queue are consumed and dropped
        assert set(queued_ids(redis.Redis.from_url(redis_url), "small")) == set(ids)
        back = worker("small")
        wait_until(lambda: not queued_ids(redis.Redis.from_url(redis_url), "small"), 60, "the old messages taken")
        for job_id in ids:
            back.wait_for_output(job_id, timeout=30)
            job = alice.job(job_id)
            assert job["state"] == "succeeded" and job["attempt"] == 1, job
            assert [e["kind"] for e in alice.events(job_id)].count("started") == 1
        assert alice.wait_done(after["id"], timeout=240)["state"] == "succeeded"

        # the large class is killed: a job only it holds fails once the grace is over, naming its class
        large_worker.kill(signal.SIGKILL)
        killed = time.monotonic()
        response = alice.submit(large)
        assert response.status_code == 202 and response.json()["queue"] == "large", response.text
        job = alice.wait_done(response.json()["id"], timeout=expiry + grace + 30)
        print(f"large class killed: its job failed {time.monotonic() - killed:.1f} s after the kill: {job['error']}")
        assert job["state"] == "failed" and job["error"].startswith("worker class 'large' has had no live worker")
        assert "no live worker class can run the job" in job["error"]
        assert alice.events(job["id"])[-1]["detail"] == job["error"]
    finally:
        for proc in procs.values():
            proc.stop()

"""The distributed setup, all real processes: API (`twossp serve` with a broker), Celery workers on Redis,
the reaper, Postgres, and an S3 server on loopback. Includes the fault tests (kill, cancel, time limit)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import redis

from api.client import download_artifact
from service.lifecycle import HARD_TIMEOUT
from service.settings import Settings

from .checks import assert_torch_not_loaded, check_history, check_model_perplexity, check_succeeded_job
from .procs import TERMINAL, Api, Proc, create_key, start_api, start_reaper, start_worker, wait_until
from .support import job_body, s3_settings, stuck_body

pytestmark = pytest.mark.slow
CANCEL_GRACE_S = 2.0


@dataclass
class Stack:
    settings: Settings
    base: str
    alice: Api
    bob: Api
    logs: Path
    workers: list[Proc]

    def worker(self, **env: str) -> Proc:
        """A Celery worker; stop it before the test ends (another test's jobs must not land on it)."""
        proc = start_worker(self.settings, self.logs, **env)
        self.workers.append(proc)
        return proc


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_factory: Callable[[], str],
    redis_server: str,
    s3_endpoint: str,
    test_data: Path,
    slow_model: Path,
) -> Iterator[Stack]:
    bucket = "twossp-e2e"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    redis.Redis.from_url(redis_server).flushdb()
    root = tmp_path_factory.mktemp("distributed")
    logs = root / "logs"
    logs.mkdir()
    settings = Settings(
        data_dir=root / "data",
        database_url=pg_factory(),
        broker_url=redis_server,
        allowed_local_roots=[test_data, slow_model.parent],
        lease_seconds=4,
        reaper_interval_s=0.5,
        dispatch_grace_s=1,
        cancel_grace_s=CANCEL_GRACE_S,
        max_attempts=3,
        torch_threads=1,
        **s3_settings(s3_endpoint, bucket),
    )
    api, base = start_api(settings, logs)
    reaper = start_reaper(settings, logs)
    stack = Stack(
        settings, base, Api(base, create_key(settings, "alice")), Api(base, create_key(settings, "bob")), logs, []
    )
    yield stack
    for proc in [*stack.workers, reaper, api]:
        proc.stop()


@pytest.fixture
def worker(stack: Stack) -> Iterator[Proc]:
    proc = stack.worker()
    yield proc
    proc.stop()


def slow_body(slow_model: Path, stories_text: Path) -> dict:
    return job_body(slow_model, stories_text, calibration_windows=12, sparsity=0.5)


def test_job_end_to_end_on_the_real_model(
    stack: Stack, worker: Proc, stories_model: Path, stories_text: Path, tmp_path: Path
) -> None:
    submitted = stack.alice.submit(job_body(stories_model, stories_text))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    job = stack.alice.wait_done(job_id, timeout=90)
    check_succeeded_job(job)
    assert job["attempt"] == 1 and job["artifact"]["store"] == "s3"
    assert_torch_not_loaded(worker.pid)  # the job ran in a pool child; the parent never imported torch

    listing = stack.alice.http.get(f"/jobs/{job_id}/artifact").json()
    assert listing["kind"] == "presigned" and listing["expires_in"] == stack.settings.presign_expiry_s
    model_dir = download_artifact(stack.base, stack.alice.key, job_id, tmp_path / "download")
    assert (model_dir / "config.json").is_file() and (model_dir / "report.json").is_file()
    check_model_perplexity(model_dir, job)

    # another user sees nothing
    assert stack.bob.http.get(f"/jobs/{job_id}").status_code == 404
    assert stack.bob.http.get(f"/jobs/{job_id}/artifact").status_code == 404


def test_job_with_heal_through_a_celery_worker(stack: Stack, stories_model: Path, stories_text: Path) -> None:
    """Prune, heal and evaluate again in a Celery pool process: the heal is seen step by step over HTTP while it
    runs, and GET /jobs/{id} ends with the healed perplexities and the heal block."""
    steps = 24
    heal = {"steps": steps, "batch_size": 2, "seq_len": 128, "lr": 3e-3}
    worker = stack.worker(TWOSSP_HEARTBEAT_INTERVAL_S="0.2")  # the running job's stage is written every 0.2 s
    seen: list[tuple[str, str | None, float]] = []

    def finished(job_id: str) -> dict | None:
        job = stack.alice.job(job_id)
        seen.append((job["state"], job["stage"], job["progress"]))
        return job if job["state"] in TERMINAL else None

    try:
        submitted = stack.alice.submit(job_body(stories_model, stories_text, heal=heal))
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        job = wait_until(lambda: finished(job_id), 60, "the healed job", interval=0.05)
    finally:
        worker.stop()

    check_succeeded_job(job)
    running = [stage for state, stage, _ in seen if state == "running" and stage is not None]
    healing = {stage for stage in running if stage.startswith("heal (step ") and f"/{steps} loss " in stage}
    assert len(healing) >= 2, running  # seen at several of its steps, not only once
    percents = [percent for _, _, percent in seen]
    assert percents == sorted(percents) and percents[-1] == 100.0, seen
    assert {"heal_data", "heal", "evaluate_healed"} <= job["stage_timings"].keys()

    report = job["report"]
    assert report["perplexity"] and all(e["healed"] < e["pruned"] for e in report["perplexity"]), report
    assert report["heal"]["steps"] == steps and len(report["heal"]["loss_curve"]) == steps
    stages = check_history(stack.alice.events(job_id, limit=50), [("submitted", 0), ("started", 1), ("succeeded", 1)])
    assert stages[1][-5:] == ["heal_data", "heal", "evaluate_healed", "export", "upload"], stages


def test_worker_killed_mid_job_is_rerun(stack: Stack, slow_model: Path, stories_text: Path) -> None:
    first = stack.worker()
    job_id = stack.alice.submit(slow_body(slow_model, stories_text)).json()["id"]
    stack.alice.wait_state(job_id, {"running"}, timeout=60)
    wait_until(lambda: stack.alice.job(job_id)["stage"] in {"stage1", "stage2"}, 60, "stage 1")
    first.kill()  # SIGKILL to the worker and its pool child
    assert stack.alice.job(job_id)["state"] == "running"
    second = stack.worker()
    try:
        job = stack.alice.wait_done(job_id, timeout=90)
    finally:
        second.stop()
    assert job["state"] == "succeeded", job
    assert job["attempt"] == 2
    events = stack.alice.events(job_id)
    stages = check_history(
        events, [("submitted", 0), ("started", 1), ("requeued", 1), ("started", 2), ("succeeded", 2)]
    )
    assert "lease expired" in next(e for e in events if e["kind"] == "requeued")["detail"]
    assert stages[1][:2] == ["load", "calibration"] and stages[1][-1] in {"stage1", "stage2"}
    assert stages[2][0] == "load" and stages[2][-1] == "upload" and {"stage1", "stage2"} <= set(stages[2])
    assert stack.bob.http.get(f"/jobs/{job_id}/events").status_code == 404


def test_cancel_a_running_job_then_the_next_job_runs(
    stack: Stack, worker: Proc, slow_model: Path, stories_model: Path, stories_text: Path
) -> None:
    job_id = stack.alice.submit(slow_body(slow_model, stories_text)).json()["id"]
    wait_until(lambda: stack.alice.job(job_id)["stage"] in {"stage1", "stage2"}, 60, "stage 1")
    assert stack.bob.cancel(job_id).status_code == 404
    response = stack.alice.cancel(job_id)
    assert response.status_code == 202 and response.json()["cancel_requested"]
    started = time.monotonic()
    job = stack.alice.wait_done(job_id, timeout=10)
    assert job["state"] == "cancelled" and time.monotonic() - started < 10
    assert stack.alice.cancel(job_id).json()["state"] == "cancelled"
    events = stack.alice.events(job_id)
    check_history(events, [("submitted", 0), ("started", 1), ("cancel_requested", 1), ("cancelled", 1)])
    assert events[-1]["detail"] == "cancelled by user" and events[-1]["state"] == "cancelled"

    next_id = stack.alice.submit(job_body(stories_model, stories_text, seed=1)).json()["id"]
    assert stack.alice.wait_done(next_id, timeout=60)["state"] == "succeeded"
    assert stack.alice.cancel(next_id).status_code == 409


def test_a_cancelled_job_stuck_in_one_step_is_killed_after_the_grace(
    stack: Stack, worker: Proc, slow_model: Path, stories_model: Path, stories_text: Path
) -> None:
    body = stuck_body(slow_model.parent, stories_model, stories_text)
    job_id = stack.alice.submit(body).json()["id"]
    wait_until(lambda: stack.alice.job(job_id)["stage"] == "calibration", 60, "calibration")
    asked = time.monotonic()
    assert stack.alice.cancel(job_id).status_code == 202
    job = stack.alice.wait_done(job_id, timeout=30)
    assert job["state"] == "cancelled", job
    assert "killed" in job["error"]  # the reaper had it killed; the job itself never reached a safe point
    assert time.monotonic() - asked < CANCEL_GRACE_S + 6

    # the worker replaced its killed pool process and takes the next job
    next_id = stack.alice.submit(job_body(stories_model, stories_text, seed=2)).json()["id"]
    assert stack.alice.wait_done(next_id, timeout=60)["state"] == "succeeded"


def test_a_job_past_its_time_limit_fails_with_timeout(stack: Stack, slow_model: Path, stories_text: Path) -> None:
    limited = stack.worker(TWOSSP_JOB_SOFT_TIME_LIMIT_S="2", TWOSSP_JOB_TIME_LIMIT_S="6")
    try:
        job_id = stack.alice.submit(slow_body(slow_model, stories_text)).json()["id"]
        job = stack.alice.wait_done(job_id, timeout=40)
    finally:
        limited.stop()
    assert job["state"] == "failed", job
    assert "timeout" in job["error"]


def test_a_job_stuck_past_the_hard_time_limit_is_killed_and_failed(
    stack: Stack, slow_model: Path, stories_model: Path, stories_text: Path
) -> None:
    # neither the soft limit nor the heartbeat can stop the tokenizer: Celery's hard limit kills the pool
    # process, and the worker's main process records the timeout at once (not the reaper, a lease later)
    limited = stack.worker(TWOSSP_JOB_SOFT_TIME_LIMIT_S="4", TWOSSP_JOB_TIME_LIMIT_S="5")
    try:
        job_id = stack.alice.submit(stuck_body(slow_model.parent, stories_model, stories_text)).json()["id"]
        job = stack.alice.wait_done(job_id, timeout=40)
    finally:
        limited.stop()
    assert job["state"] == "failed", job
    # recorded when the run ended (by the kill, or by the soft limit if the step returned in time), never by the
    # reaper after the lease ran out
    assert job["error"] == HARD_TIMEOUT or job["error"].startswith("timeout: the job exceeded its time limit"), job

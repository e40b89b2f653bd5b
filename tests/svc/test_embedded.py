"""`twossp serve` with no settings: SQLite and a local artifact folder under ./twossp-data, an in-process
worker running each job in a child process; the same job flow end to end."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.client import download_artifact

from .checks import assert_torch_not_loaded, check_history, check_model_perplexity, check_succeeded_job
from .procs import Embedded, bare_env, wait_until
from .support import job_body, stuck_body

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path: Path, test_data: Path, slow_model: Path) -> Iterator[Embedded]:
    server = Embedded(tmp_path, bare_env([test_data, slow_model.parent]))
    yield server
    server.proc.stop()


def test_embedded_default_runs_the_whole_flow(
    serve: Embedded, tmp_path: Path, stories_model: Path, stories_text: Path, slow_model: Path
) -> None:
    checks = serve.api.http.get("/readyz").json()["checks"]
    assert checks == {"database": "ok", "broker": "ok", "store": "ok", "queue": "ok"}
    data_dir = tmp_path / "twossp-data"
    assert (data_dir / "twossp.db").is_file()

    headers = {"Idempotency-Key": "first"}
    response = serve.api.submit(job_body(stories_model, stories_text), **headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert serve.api.submit(job_body(stories_model, stories_text), **headers).json()["id"] == job_id
    job = serve.api.wait_done(job_id, timeout=90)
    check_succeeded_job(job)
    assert job["artifact"]["store"] == "local"
    assert_torch_not_loaded(serve.proc.pid)  # the job ran in a child process
    assert (data_dir / "artifacts" / "jobs" / job_id / "attempt-1" / "manifest.json").is_file()

    archive = serve.api.http.get(f"/jobs/{job_id}/artifact")
    assert archive.headers["content-type"] == "application/x-tar"
    assert archive.headers["x-manifest-sha256"] == job["artifact"]["manifest_sha256"]
    model_dir = download_artifact(serve.base, serve.key, job_id, tmp_path / "download")
    check_model_perplexity(model_dir, job)
    cli = subprocess.run(
        [sys.executable, "-m", "server.cli", "download", job_id, "--api", serve.base, "--key", serve.key,
         "--out", str(tmp_path / "cli-download")],
        cwd=tmp_path, env=serve.env, capture_output=True, text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert Path(cli.stdout.strip().splitlines()[-1]) == tmp_path / "cli-download" / "model"

    # cancel a running job, then the next one still runs
    slow_id = serve.api.submit(job_body(slow_model, stories_text, calibration_windows=12)).json()["id"]
    wait_until(lambda: serve.api.job(slow_id)["stage"] in {"stage1", "stage2"}, 60, "stage 1")
    assert serve.api.cancel(slow_id).status_code == 202
    assert serve.api.wait_done(slow_id, timeout=10)["state"] == "cancelled"
    next_id = serve.api.submit(job_body(stories_model, stories_text, seed=3)).json()["id"]
    assert serve.api.wait_done(next_id, timeout=60)["state"] == "succeeded"
    listing = serve.api.http.get("/jobs").json()
    assert listing["total"] == 3


def test_embedded_time_limit_fails_the_job_with_timeout(
    tmp_path: Path, test_data: Path, slow_model: Path, stories_text: Path
) -> None:
    env = bare_env(
        [test_data, slow_model.parent], TWOSSP_JOB_SOFT_TIME_LIMIT_S="2", TWOSSP_JOB_TIME_LIMIT_S="3"
    )
    server = Embedded(tmp_path, env)
    try:
        job_id = server.api.submit(job_body(slow_model, stories_text, calibration_windows=12)).json()["id"]
        job = server.api.wait_done(job_id, timeout=30)
    finally:
        server.proc.stop()
    assert job["state"] == "failed" and "timeout" in job["error"], job


def test_embedded_kills_a_cancelled_job_stuck_in_one_step_after_the_grace(
    tmp_path: Path, test_data: Path, slow_model: Path, stories_model: Path, stories_text: Path
) -> None:
    server = Embedded(tmp_path, bare_env([test_data, slow_model.parent], TWOSSP_CANCEL_GRACE_S="1"))
    try:
        job_id = server.api.submit(stuck_body(slow_model.parent, stories_model, stories_text)).json()["id"]
        wait_until(lambda: server.api.job(job_id)["stage"] == "calibration", 60, "calibration")
        asked = time.monotonic()
        assert server.api.cancel(job_id).status_code == 202
        job = server.api.wait_done(job_id, timeout=30)
        assert job["state"] == "cancelled" and "killed" in job["error"], job
        assert time.monotonic() - asked < 1 + 6
        next_id = server.api.submit(job_body(stories_model, stories_text, seed=4)).json()["id"]
        assert server.api.wait_done(next_id, timeout=60)["state"] == "succeeded"
    finally:
        server.proc.stop()


def test_embedded_cancel_during_evaluation_ends_cancelled_within_a_second_without_a_kill(
    tmp_path: Path, test_data: Path, slow_model: Path, stories_text: Path
) -> None:
    # a grace far longer than the test allows: ending `cancelled` in time means the job stopped by itself
    server = Embedded(tmp_path, bare_env([test_data, slow_model.parent], TWOSSP_CANCEL_GRACE_S="60"))
    try:
        body = job_body(slow_model, stories_text, eval=[f"{stories_text}:500:1000"], eval_windows=120)
        job_id = server.api.submit(body).json()["id"]
        wait_until(lambda: server.api.job(job_id)["stage"] == "evaluate_dense", 60, "evaluate_dense", interval=0.05)
        asked = time.monotonic()
        assert server.api.cancel(job_id).status_code == 202
        job = server.api.wait_state(job_id, {"cancelled"}, timeout=20)
        stopped = time.monotonic() - asked
        assert job["error"] == "cancelled by user" and job["stage"] == "evaluate_dense", job
        assert stopped < 3, stopped  # the heartbeat (1 s) and one batch, not the rest of the evaluation
    finally:
        server.proc.stop()


def test_embedded_restart_after_a_kill_reruns_the_job(
    tmp_path: Path, test_data: Path, slow_model: Path, stories_text: Path
) -> None:
    env = bare_env([test_data, slow_model.parent], TWOSSP_LEASE_SECONDS="2")
    first = Embedded(tmp_path, env)
    job_id = first.api.submit(job_body(slow_model, stories_text, calibration_windows=12)).json()["id"]
    wait_until(lambda: first.api.job(job_id)["stage"] in {"stage1", "stage2"}, 60, "stage 1")
    first.proc.kill()  # SIGKILL the server; its job child exits with it
    second = Embedded(tmp_path, env)
    try:
        job = second.api.wait_done(job_id, timeout=60)
        events = second.api.events(job_id)
    finally:
        second.proc.stop()
    assert job["state"] == "succeeded" and job["attempt"] == 2, job
    stages = check_history(
        events, [("submitted", 0), ("started", 1), ("requeued", 1), ("started", 2), ("succeeded", 2)]
    )
    assert stages[2][0] == "load" and stages[2][-1] == "upload"


def test_embedded_job_with_heal_reports_the_healed_model(
    serve: Embedded, tmp_path: Path, stories_model: Path, stories_text: Path
) -> None:
    heal = {"steps": 6, "batch_size": 2, "seq_len": 128, "lr": 3e-3}
    assert serve.api.submit(job_body(stories_model, stories_text, heal={"stepz": 1})).status_code == 422
    response = serve.api.submit(job_body(stories_model, stories_text, heal=heal))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    stages: set[str] = set()

    def done() -> bool:
        job = serve.api.job(job_id)
        stages.add(job["stage"] or "")
        return job["state"] in {"succeeded", "failed", "cancelled"}

    wait_until(done, 120, "the healed job")
    job = serve.api.job(job_id)
    check_succeeded_job(job)
    assert job["spec"]["heal"]["steps"] == 6
    assert {"heal", "evaluate_healed"} <= job["stage_timings"].keys()  # the heal stage ran and reported progress
    assert all(s.startswith("heal (step ") for s in stages if s.startswith("heal ")), stages
    (entry,) = job["report"]["perplexity"]
    assert entry["healed"] < entry["pruned"]
    assert job["report"]["heal"]["steps"] == 6 and len(job["report"]["heal"]["loss_curve"]) == 6
    model_dir = download_artifact(serve.base, serve.key, job_id, tmp_path / "download")
    assert (model_dir / "heal_loss.png").is_file()
    check_model_perplexity(model_dir, job)  # the artifact is the healed model


def test_download_failures_are_one_line(
    serve: Embedded, tmp_path: Path, stories_model: Path, stories_text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from server.cli import main as twossp

    job_id = serve.api.submit(job_body(stories_model, stories_text)).json()["id"]
    serve.api.cancel(job_id)
    assert serve.api.wait_done(job_id, timeout=60)["state"] == "cancelled"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    cases = [
        ([job_id, "--key", serve.key], f"job {job_id} has no artifact to download: it is cancelled"),
        ([str(uuid.uuid4()), "--key", serve.key], "HTTP 404"),
        ([job_id, "--key", "tsp_wrong"], "HTTP 401"),
        ([job_id, "--key", serve.key, "--api", "http://127.0.0.1:9"], "cannot reach the API at http://127.0.0.1:9"),
        ([job_id, "--key", serve.key, "--out", str(busy)], "--overwrite"),
    ]
    for args, needle in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "dl")]
        api = [] if "--api" in args else ["--api", serve.base]
        assert twossp(["download", *args, *api, *out]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("twossp: error: ") and needle in err, err
    assert (busy / "keep.txt").read_text() == "x"

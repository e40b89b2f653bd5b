"""Cancelling with real Celery workers (no reaper: the worker's own supervisor does it all): a job loading its model is
interrupted where it is, a job stuck in one call is killed at the cancel grace, and the messages of jobs cancelled
while queued are dropped by the task without starting a job process."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from service.settings import Settings

from .checks import check_history
from .procs import Api, Proc, create_key, start_api, start_worker, wait_until
from .support import job_body, stuck_body

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    settings: Settings
    alice: Api
    logs: Path
    redis_url: str


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory, stories_model: Path) -> Path:
    """A randomly initialised 303 M-parameter Llama (24 blocks, hidden 1024; 1.2 GB of float32) with the stories260k
    tokenizer: loading it in bfloat16 takes seconds even on an idle machine, long enough to cancel it mid-load (an
    8-block one loaded before the cancel landed there)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "big-llama"
    config = LlamaConfig(
        vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(stories_model / name, out / name)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_factory: Callable[[], str], redis_server: str,
          test_data: Path, slow_model: Path, big_model: Path) -> Iterator[Stack]:
    redis.Redis.from_url(redis_server).flushdb()
    root = tmp_path_factory.mktemp("cancel")
    logs = root / "logs"
    logs.mkdir()
    settings = Settings(
        data_dir=root / "data", database_url=pg_factory(), broker_url=redis_server, torch_threads=1,
        allowed_local_roots=[test_data, slow_model.parent, big_model.parent], heartbeat_interval_s=0.2,
    )
    api, base = start_api(settings, logs)
    yield Stack(settings, Api(base, create_key(settings, "alice")), logs, redis_server)
    api.stop()
    redis.Redis.from_url(redis_server).flushdb()


@pytest.fixture
def workers(stack: Stack) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.stop()


def cancel_when(stack: Stack, job_id: str, stage: str, settle: float = 0.0) -> tuple[dict, float]:
    """Cancel the job `settle` seconds after it reports `stage`; the job once cancelled, and the seconds from the
    request."""
    wait_until(lambda: stack.alice.job(job_id)["stage"] == stage, 180, stage, interval=0.05)
    time.sleep(settle)
    asked = time.monotonic()
    assert stack.alice.cancel(job_id).status_code == 202
    job = stack.alice.wait_state(job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
    return job, time.monotonic() - asked


def test_cancel_while_loading_interrupts_the_load(
    stack: Stack, workers: list[Proc], big_model: Path, stories_text: Path
) -> None:
    # a grace far longer than the test allows: ending `cancelled` in time, in `load`, means the load was interrupted
    workers.append(start_worker(stack.settings, stack.logs, TWOSSP_CANCEL_GRACE_S="60"))
    body = job_body(big_model, stories_text, dtype="bfloat16", calibration_windows=2)
    job_id = stack.alice.submit(body).json()["id"]
    job, seconds = cancel_when(stack, job_id, "load")
    print(f"cancel during load: cancelled {seconds:.2f} s after the request")
    assert job["state"] == "cancelled" and job["error"] == "cancelled by user", job  # not killed
    assert job["stage"] == "load", job
    assert seconds < 3, seconds  # measured 0.3-0.6 s; the bound leaves room for a loaded machine
    events = stack.alice.events(job_id, limit=50)
    stages = check_history(events, [("submitted", 0), ("started", 1), ("cancel_requested", 1), ("cancelled", 1)])
    assert stages[1] == ["load"], stages  # it never got to the data


def test_cancel_in_a_call_that_cannot_be_interrupted_kills_the_job_at_the_grace(
    stack: Stack, workers: list[Proc], slow_model: Path, stories_model: Path, stories_text: Path
) -> None:
    grace = 0.5
    workers.append(start_worker(stack.settings, stack.logs, TWOSSP_CANCEL_GRACE_S=str(grace)))
    job_id = stack.alice.submit(stuck_body(slow_model.parent, stories_model, stories_text)).json()["id"]
    # tokenizing one 12 MB document is one long call; the stage is reported just before it, and a cancel landing in
    # between stops the job at its next safe point instead (not killed), so the cancel waits until the call runs
    job, seconds = cancel_when(stack, job_id, "calibration", settle=1.0)
    print(f"cancel during a data step that cannot be interrupted: cancelled (killed) {seconds:.2f} s after the request")
    assert job["state"] == "cancelled" and "killed" in job["error"], job
    assert seconds < grace + 2.5, seconds
    # the worker's pool process supervised the kill and takes the next job
    next_id = stack.alice.submit(job_body(stories_model, stories_text, seed=5)).json()["id"]
    assert stack.alice.wait_done(next_id, timeout=180)["state"] == "succeeded"


def test_messages_of_jobs_cancelled_while_queued_are_dropped_without_a_job_process(
    stack: Stack, workers: list[Proc], stories_model: Path, stories_text: Path
) -> None:
    count = 20
    ids = [stack.alice.submit(job_body(stories_model, stories_text, seed=100 + i)).json()["id"] for i in range(count)]
    for job_id in ids:
        assert stack.alice.cancel(job_id).json()["state"] == "cancelled"
    client = redis.Redis.from_url(stack.redis_url)
    # no worker yet: the messages wait (with, perhaps, the message of an earlier test's job whose worker was stopped
    # before it acknowledged it: given back, and dropped like these)
    waiting = [json.loads(raw)["headers"]["id"] for raw in client.lrange(stack.settings.celery_queue, 0, -1)]
    assert set(ids) <= set(waiting), (waiting, ids)

    worker = start_worker(stack.settings, stack.logs)
    workers.append(worker)
    started = time.monotonic()
    wait_until(lambda: client.llen(stack.settings.celery_queue) == 0 and client.hlen("unacked") == 0, 120,
               "the messages to be taken and acknowledged")
    for job_id in ids:
        worker.wait_for_output(f"job {job_id} is cancelled: message dropped, no job process started", timeout=30)
    drained = time.monotonic() - started
    print(f"{count} messages of cancelled jobs acknowledged and dropped {drained:.1f} s after the worker was ready")
    log = worker.output()
    # one pool process read them all (no process was started for any) and no job process ran
    dropping = set(re.findall(r"/(ForkPoolWorker-\d+)\] job \S+ is cancelled: message dropped", log))
    assert dropping == {"ForkPoolWorker-1"}, dropping
    assert " ended " not in log and "attempt 1 started" not in log
    for job_id in ids:
        assert [e["kind"] for e in stack.alice.events(job_id)] == ["submitted", "dispatched", "cancelled"]

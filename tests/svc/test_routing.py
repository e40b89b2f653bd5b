"""Routing jobs by memory: the choice of a worker class (units), the registry workers advertise in, the broker
looking into every routed queue, and two real Celery workers on their own queues taking the jobs that fit them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from api.services.jobs import submit_job
from service import lifecycle
from service.broker import CeleryBroker
from service.db.migrate import upgrade_head
from service.db.models import Job, Worker
from service.db.session import Database
from service.db.types import utcnow
from service.keys import create_key as new_key
from service.keys import user_for_key
from service.routing import NoWorkerFits, WorkerClass, capped_budgets, choose_queue
from service.settings import Settings
from service.workers import Advertisement, Capacity, advertise, withdraw, worker_classes
from twossp_core.plan.memory import spec_plan
from twossp_core.plan.sizes import format_size
from twossp_core.plan.spec import parse_spec, parse_sweep_spec
from worker.advertise import detect_capacity, parse_probe
from worker.maintenance import run_maintenance

from .procs import Api, Proc, create_key, start_api, start_worker
from .support import job_body

GB = 10**9
# a Llama-2-7B-shaped config: 6.7 B parameters, 27 GB of float32 weights
LLAMA_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "architectures": ["LlamaForCausalLM"],
}


def spec(**fields: Any):  # type: ignore[no-untyped-def]
    return parse_spec({"model": "/models/llama-7b", "sparsity": 0.375, "seq_len": 2048, **fields})


def gpu(queue: str, gb: float, host_gb: float = 512) -> WorkerClass:
    return WorkerClass(queue, "cuda", int(gb * GB), int(host_gb * GB))


def cpu(queue: str, gb: float) -> WorkerClass:
    return WorkerClass(queue, "cpu", int(gb * GB), int(gb * GB))


# ---- the choice --------------------------------------------------------------------------------------------
def test_the_smallest_class_that_holds_the_plan_is_chosen() -> None:
    need = spec_plan(spec(), LLAMA_7B, device="cuda").device_peak  # in memory: about 31 GB
    assert 25 * GB < need < 40 * GB
    classes = [gpu("h200", 141), gpu("a100-40", 40), gpu("l4", 24), gpu("h100", 80)]
    route = choose_queue(spec(), LLAMA_7B, classes)
    assert route.queue == "a100-40" and route.plan is not None and route.plan.mode == "in-memory"
    # bfloat16 halves the weights: the 24 GB class holds it
    assert choose_queue(spec(dtype="bfloat16"), LLAMA_7B, classes).queue == "l4"


def test_a_budget_that_runs_block_by_block_needs_a_smaller_class() -> None:
    classes = [gpu("small", 16), gpu("large", 80)]
    assert choose_queue(spec(), LLAMA_7B, classes).queue == "large"
    route = choose_queue(spec(max_device_memory="12GB"), LLAMA_7B, classes)
    assert route.queue == "small"
    assert route.plan is not None and route.plan.mode == "block-by-block" and route.plan.device_peak < 12 * GB


def test_a_gpu_class_also_needs_the_host_memory_of_the_load() -> None:
    # in memory the model is loaded on the host first: twice the weights (54 GB) do not fit a 32 GB host
    classes = [gpu("gpu-small-host", 80, host_gb=32), gpu("gpu-big-host", 96, host_gb=256)]
    assert choose_queue(spec(), LLAMA_7B, classes).queue == "gpu-big-host"


def test_device_auto_prefers_gpu_classes_and_device_cpu_uses_host_memory() -> None:
    classes = [cpu("cpu", 64), gpu("gpu", 80, host_gb=64)]
    assert choose_queue(spec(), LLAMA_7B, classes).queue == "gpu"
    # a CPU job needs the 64 GB host: both classes have it, the smaller (by offered memory) is taken
    assert choose_queue(spec(device="cpu"), LLAMA_7B, classes).queue == "cpu"
    with pytest.raises(NoWorkerFits, match="asks for device 'cuda'"):
        choose_queue(spec(device="cuda"), LLAMA_7B, [cpu("cpu", 512)])


def test_a_job_no_class_holds_in_memory_runs_block_by_block_with_the_class_memory_as_budgets() -> None:
    classes = [gpu("tiny", 4), gpu("small", 16), gpu("large", 24)]  # 7B in float32 needs about 31 GB in memory
    route = choose_queue(spec(), LLAMA_7B, classes)
    assert route.queue == "small"  # block by block it needs about 8.7 GB of device memory: not the 4 GB class
    assert route.budgets == {"max_host_memory": 512 * GB, "max_device_memory": 16 * GB}
    assert route.plan is not None and route.plan.mode == "block-by-block" and route.plan.device_peak <= 16 * GB
    # a job that forces in-memory execution is not moved to block-by-block
    with pytest.raises(NoWorkerFits, match="the largest worker class is 'large'"):
        choose_queue(spec(execution="in-memory"), LLAMA_7B, classes)


def test_a_job_no_class_can_hold_is_refused_with_its_need_and_the_largest_capacity() -> None:
    classes = [gpu("small", 2), gpu("large", 4)]
    with pytest.raises(NoWorkerFits) as caught:
        choose_queue(spec(), LLAMA_7B, classes)
    message = str(caught.value)
    need = spec_plan(spec(), LLAMA_7B, device="cuda").device_peak
    assert f"needs {need / GB:.2f} GB device memory" in message
    assert "the largest worker class is 'large' (cuda, 4.00 GB device" in message
    assert "'large' block by block: the model does not fit the memory budget" in message  # nor block by block
    assert "max_device_memory" in message


def test_a_sweep_is_planned_in_memory_and_a_hub_model_goes_to_the_largest_class() -> None:
    sweep = parse_sweep_spec({"model": "/m", "methods": ["2ssp", "shortgpt"], "sparsities": [0.25, 0.5],
                              "seq_len": 2048, "dtype": "bfloat16"})
    classes = [gpu("small", 16), gpu("mid", 24), gpu("large", 80)]
    # one prune of the 7B model in bfloat16 fits the 24 GB class; a sweep also holds a pruned copy beside the
    # dense model (27 GB of weights), in memory: it goes to the 80 GB class, not block by block to a smaller one
    assert choose_queue(sweep.prune_spec("2ssp", 0.5), LLAMA_7B, classes).queue == "mid"
    route = choose_queue(sweep, LLAMA_7B, classes)
    assert route.queue == "large" and route.plan is not None and route.plan.mode == "in-memory"
    route = choose_queue(spec(model="meta-llama/Llama-2-7b-hf"), None, classes)
    assert route.queue == "large" and route.plan is None


def test_a_class_with_several_gpus_holds_a_job_spread_over_them() -> None:
    # 7B in float32 (about 31 GB in memory) fits no 24 GB GPU, but spreads over two of them
    two = WorkerClass("l4x2", "cuda", 24 * GB, 512 * GB, gpus=2)
    route = choose_queue(spec(), LLAMA_7B, [gpu("l4", 24), two])
    assert route.queue == "l4x2" and route.budgets == {}
    assert route.plan is not None and route.plan.mode == "multi-device" and route.plan.placement is not None
    assert [d.device for d in route.plan.placement.devices] == ["cuda:0", "cuda:1"]
    assert route.plan.device_peak <= 24 * GB
    # with one GPU of each size, block by block on one GPU as before
    assert choose_queue(spec(), LLAMA_7B, [gpu("l4", 24), gpu("l4-b", 24)]).plan.mode == "block-by-block"
    # classes are ordered by their total GPU memory: a job one GPU holds goes to the class with one
    assert choose_queue(spec(dtype="bfloat16"), LLAMA_7B, [two, gpu("l4", 24)]).queue == "l4"
    assert choose_queue(spec(), LLAMA_7B, [two, gpu("h100", 80)]).queue == "l4x2"  # 48 GB in all < 80 GB
    # a job that asks for multi-device is planned over the class's GPUs
    forced = choose_queue(spec(execution="multi-device"), LLAMA_7B, [two])
    assert forced.plan is not None and forced.plan.mode == "multi-device"
    assert "2 x 24.00 GB device" in two.describe()


def test_a_worker_caps_the_budgets_a_job_sets_above_its_class_memory() -> None:
    small = gpu("small", 16, host_gb=64)
    asked = spec(max_device_memory="100GB", max_host_memory="1TB")
    assert capped_budgets(asked, small) == {"max_device_memory": 16 * GB, "max_host_memory": 64 * GB}
    # the smaller of the two: budgets under the class's memory stay, unset ones stay unset
    assert capped_budgets(spec(max_device_memory="12GB", max_host_memory="1TB"), small) == {
        "max_host_memory": 64 * GB}
    assert capped_budgets(spec(max_device_memory="12GB"), small) == {}
    # a CPU job on a GPU worker: its host budget against the host memory, no device budget of its own to cap
    assert capped_budgets(spec(device="cpu", max_host_memory="1TB", max_device_memory="100GB"), small) == {
        "max_host_memory": 64 * GB}
    assert capped_budgets(spec(max_host_memory="1TB"), cpu("cpu", 32)) == {"max_host_memory": 32 * GB}
    # capped, the 7B job that asked for 100 GB of GPU memory is planned block by block within the 16 GB
    capped = asked.model_copy(update=capped_budgets(asked, small))
    plan = spec_plan(capped, LLAMA_7B, device="cuda")
    assert spec_plan(asked, LLAMA_7B, device="cuda").mode == "in-memory"
    assert plan.mode == "block-by-block" and plan.device_peak <= 16 * GB


def test_a_job_whose_budgets_exceed_every_class_is_routed_with_them_capped_as_the_worker_runs_it() -> None:
    """Routing plans each class with the smaller of the job's budget and the class's memory, as a worker of the
    class runs the job: a job asking for more than any class has goes where it fits within the class's memory."""
    classes = [gpu("tiny", 4, host_gb=64), gpu("small", 16, host_gb=64), gpu("large", 24, host_gb=64)]
    asked = spec(max_device_memory="100GB", max_host_memory="1TB")
    assert spec_plan(asked, LLAMA_7B, device="cuda").mode == "in-memory"  # 31 GB: within its budgets, in no class
    route = choose_queue(asked, LLAMA_7B, classes)
    assert route.queue == "small" and route.budgets == {}  # the job keeps its budgets; the worker caps them
    capped = asked.model_copy(update=capped_budgets(asked, classes[1]))
    assert route.plan == spec_plan(capped, LLAMA_7B, device="cuda")
    assert route.plan.mode == "block-by-block" and route.plan.device_peak <= 16 * GB
    # a CPU job's host budget, likewise
    cpu_job = spec(device="cpu", max_host_memory="1TB")
    route = choose_queue(cpu_job, LLAMA_7B, [cpu("cpu-16", 16), cpu("cpu-24", 24)])
    assert route.queue == "cpu-16" and route.plan is not None and route.plan.mode == "block-by-block"
    assert route.plan.host_peak <= 16 * GB
    # a job that forces in-memory execution is refused with what the largest class offers it, not its own budget
    with pytest.raises(NoWorkerFits, match="'large'.*does not fit the memory budget \\(host 64.00 GB, device 24.00 GB"):
        choose_queue(spec(execution="in-memory", max_device_memory="100GB", max_host_memory="1TB"), LLAMA_7B,
                     classes)


@pytest.mark.slow
def test_the_worker_runs_a_job_with_budgets_above_its_memory_within_its_memory(
    tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, stories_model: Path, stories_text: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job asking for 1 TB of host memory, run by a worker advertising less than its in-memory plan: the worker
    runs it block by block within its own memory and the report says what it capped."""
    from twossp_core.runtime import modes
    from worker.runner import JobRunner

    monkeypatch.setattr(modes, "current_rss", lambda: 3 * 10**8)  # a fixed baseline: the model is below RSS noise
    body = job_body(stories_model, stories_text, seq_len=128, calibration_windows=4, device="cpu",
                    max_host_memory="1TB")
    roomy = modes.job_plan(parse_spec(body))
    tight = modes.job_plan(parse_spec({**body, "execution": "block-by-block"}))
    assert roomy.mode == "in-memory" and tight.host_peak < roomy.host_peak
    memory = (roomy.host_peak + tight.host_peak) // 2
    settings = Settings(data_dir=tmp_path, database_url=pg_url, broker_url=redis_url,
                        allowed_local_roots=[test_data], torch_threads=1)
    db = Database(settings)
    broker = CeleryBroker(redis_url, settings.celery_queue)
    try:
        with db.session() as session:
            user = user_for_key(session, new_key(session, "alice"))
            assert user is not None
            job = submit_job(session, broker, settings, user, body, None).job
        assert job.spec["max_host_memory"] == 10**12  # the API keeps what the job asks
        runner = JobRunner(settings, db=db, capacity=Capacity("cpu", memory, memory))
        assert runner.run(job.id) == "succeeded"
        with db.session() as session:
            stored = session.get(Job, job.id)
            assert stored is not None
            report = stored.report
    finally:
        broker.close()
        db.dispose()
    assert report["memory"]["mode"] == "block-by-block"
    assert report["memory"]["budgets"]["max_host_memory"] == memory
    assert report["memory"]["capped_by_worker"] == {"max_host_memory": {"asked": 10**12, "capped_to": memory}}


# ---- what workers advertise ----------------------------------------------------------------------------------
def test_capacity_from_settings_and_detected_host_memory() -> None:
    import psutil

    assert detect_capacity(Settings(worker_device="cpu", worker_memory="2GB")).memory == 2 * GB
    detected = detect_capacity(Settings(worker_device="cpu"))
    assert detected.device == "cpu" and detected.memory == detected.host_memory == psutil.virtual_memory().total
    configured = detect_capacity(Settings(worker_device="cuda", worker_memory="80GB", worker_host_memory="1TB"))
    assert (configured.device, configured.memory, configured.host_memory) == ("cuda", 80 * GB, 10**12)
    assert configured.gpus == 1
    assert detect_capacity(Settings(worker_device="cuda", worker_memory="80GB", worker_gpus=4)).gpus == 4
    # the probe's answer: the first GPU's total memory and the visible GPUs
    assert parse_probe("85031714816 4\n") == (85031714816, 4)
    assert parse_probe("0 0\n") is None


def test_the_registry_keeps_recent_workers_one_class_per_queue(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade_head(settings)
    db = Database(settings)
    try:
        with db.session() as session:
            advertise(session, Advertisement("a@h", "small", Capacity("cuda", 24 * GB, 64 * GB)), expiry_s=60)
            advertise(session, Advertisement("b@h", "small", Capacity("cuda", 20 * GB, 128 * GB)), expiry_s=60)
            advertise(session, Advertisement("c@h", "large", Capacity("cuda", 80 * GB, 256 * GB)), expiry_s=60)
            advertise(session, Advertisement("d@h", "multi", Capacity("cuda", 80 * GB, 512 * GB, gpus=4)), expiry_s=60)
            advertise(session, Advertisement("e@h", "multi", Capacity("cuda", 80 * GB, 512 * GB, gpus=2)), expiry_s=60)
            # a renewal
            advertise(session, Advertisement("a@h", "small", Capacity("cuda", 24 * GB, 64 * GB)), expiry_s=60)
            classes = {c.queue: c for c in worker_classes(session, expiry_s=60)}
        # a job in `small` may land on either worker: the class offers the least of each
        assert classes["small"] == WorkerClass("small", "cuda", 20 * GB, 64 * GB, workers=2)
        assert classes["large"].memory == 80 * GB and classes["large"].gpus == 1
        assert classes["multi"].gpus == 2  # the least any of its workers sees
        with db.session() as session:  # `large` was last seen two minutes ago
            session.execute(update(Worker).where(Worker.queue == "large").values(
                last_seen=utcnow() - timedelta(seconds=120)))
            session.commit()
            assert [c.queue for c in worker_classes(session, expiry_s=60)] == ["multi", "small"]
            advertise(session, Advertisement("a@h", "small", Capacity("cuda", 24 * GB, 64 * GB)), expiry_s=60)
            assert session.scalars(select(Worker.name).order_by(Worker.name)).all() == [
                "a@h", "b@h", "d@h", "e@h"]  # `large` forgotten
            # a worker that stops deletes its rows: its class goes at once when it served it alone
            assert withdraw(session, "d@h", ["multi", "other"], expiry_s=60) == 1
            assert withdraw(session, "e@h", ["multi"], expiry_s=60) == 1
            assert [c.queue for c in worker_classes(session, expiry_s=60)] == ["small"]
    finally:
        db.dispose()


def test_the_broker_holds_messages_in_every_routed_queue(redis_url: str) -> None:
    broker = CeleryBroker(redis_url, "twossp")
    try:
        broker.publish("job-default")
        broker.publish("job-large", "large")
        assert broker.held() == {"job-default"}
        assert broker.held({"large"}) == {"job-default", "job-large"}
        client = redis.Redis.from_url(redis_url)
        assert client.llen("large") == 1 and client.llen("twossp") == 1
        client.close()
    finally:
        broker.close()


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]


def test_the_reaper_republishes_a_job_to_the_queue_it_was_routed_to(
    tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, stories_model: Path, stories_text: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=pg_url, broker_url=redis_url, allowed_local_roots=[test_data],
        dispatch_grace_s=0, redispatch_unheld_after_s=0.1,
    )
    db = Database(settings)
    broker = CeleryBroker(redis_url, settings.celery_queue)
    client = redis.Redis.from_url(redis_url)
    try:
        with db.session() as session:
            for queue, memory in (("small", 10 * 10**6), ("large", 10 * GB)):
                advertise(session, Advertisement(f"w-{queue}@h", queue, Capacity("cpu", memory, memory)), expiry_s=60)
            user = user_for_key(session, new_key(session, "alice"))
            assert user is not None
            job = submit_job(session, broker, settings, user, job_body(stories_model, stories_text), None).job
        assert job.queue == "large"
        assert queued_ids(client, "large") == [job.id] and client.llen("twossp") == 0

        # the broker lost the message (a restart without persistence): the reaper publishes it to `large` again
        client.delete("large")
        time.sleep(0.2)
        assert run_maintenance(db, broker, settings).dispatched == [job.id]
        assert queued_ids(client, "large") == [job.id] and client.llen("twossp") == 0
        # held in `large`: nothing more to publish
        time.sleep(0.2)
        assert run_maintenance(db, broker, settings).dispatched == []

        # a lost worker's job is requeued and published to its queue again
        with db.session() as session:
            assert lifecycle.claim(session, job.id, "host:1", lease_s=0.01) is not None
        client.delete("large")
        time.sleep(0.1)
        result = run_maintenance(db, broker, settings)
        assert result.requeued == [job.id] and job.id in result.dispatched
        assert set(queued_ids(client, "large")) == {job.id} and client.llen("twossp") == 0
    finally:
        client.close()
        broker.close()
        db.dispose()


# ---- two real worker classes -----------------------------------------------------------------------------------
def small_body(stories_model: Path, stories_text: Path) -> dict[str, Any]:
    return job_body(stories_model, stories_text, seq_len=128)


def large_body(stories_model: Path, stories_text: Path) -> dict[str, Any]:
    return job_body(stories_model, stories_text, seq_len=512)  # the attention scores grow with seq_len squared


def host_need(body: dict[str, Any]) -> int:
    """The host memory the API plans for the body on a CPU worker."""
    cfg = json.loads((Path(body["model"]) / "config.json").read_text())
    return spec_plan(parse_spec(body), cfg, device="cpu").host_peak


@dataclass
class ClassesStack:
    settings: Settings
    alice: Api
    logs: Path
    big_model: Path
    procs: dict[str, Proc]


@pytest.fixture(scope="module")
def classes_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_factory: Callable[[], str], redis_server: str, test_data: Path
) -> Iterator[ClassesStack]:
    redis.Redis.from_url(redis_server).flushdb()
    root = tmp_path_factory.mktemp("routing")
    logs = root / "logs"
    logs.mkdir()
    big_model = root / "models" / "llama-7b"  # only its config: the job is refused before anything loads
    big_model.mkdir(parents=True)
    (big_model / "config.json").write_text(json.dumps(LLAMA_7B))
    settings = Settings(
        data_dir=root / "data", database_url=pg_factory(), broker_url=redis_server,
        allowed_local_roots=[test_data, big_model.parent], torch_threads=1, lease_seconds=10,
    )
    api_proc, base = start_api(settings, logs)
    stack = ClassesStack(settings, Api(base, create_key(settings, "alice")), logs, big_model, {"api": api_proc})
    yield stack
    for proc in stack.procs.values():
        proc.stop()
    # the next module's stack must not meet these workers' messages
    redis.Redis.from_url(redis_server).flushdb()


@pytest.mark.slow
def test_jobs_go_to_the_worker_class_that_holds_them(
    classes_stack: ClassesStack, stories_model: Path, stories_text: Path
) -> None:
    stack, alice = classes_stack, classes_stack.alice
    small, large = small_body(stories_model, stories_text), large_body(stories_model, stories_text)
    small_need, large_need = host_need(small), host_need(large)
    assert large_need - small_need > 20 * 10**6

    # no worker has advertised yet: the job goes to the default queue, as before routing existed
    early = alice.submit(small)
    assert early.status_code == 202, early.text
    assert early.json()["queue"] is None
    assert alice.cancel(early.json()["id"]).json()["state"] == "cancelled"

    # a CPU class with room for the short windows only, and one with room for both
    small_memory, large_memory = (small_need + large_need) // 2, large_need + 200 * 10**6
    for name, memory in (("small", small_memory), ("large", large_memory)):
        stack.procs[name] = start_worker(stack.settings, stack.logs, queue=name, TWOSSP_WORKER_DEVICE="cpu",
                                         TWOSSP_WORKER_MEMORY=str(memory))
    for name in ("small", "large"):
        stack.procs[name].wait_for_output("advertised worker", timeout=60)

    first = alice.submit(small)
    second = alice.submit(large)
    assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
    assert first.json()["queue"] == "small" and second.json()["queue"] == "large"

    refused = alice.submit(job_body(stack.big_model, stories_text))
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "no worker class has the memory for this job: it needs" in detail
    assert f"needs {format_size(host_need(job_body(stack.big_model, stories_text)))} host (in-memory on cpu)" in detail
    assert f"the largest worker class is 'large' (cpu, {format_size(large_memory)} host)" in detail

    # a GPU class with room for it block by block (no worker consumes it here): the job is routed there with the
    # class's memory as its budgets, so a worker would run it block by block instead of running out of memory
    db = Database(stack.settings)
    with db.session() as session:
        advertise(session, Advertisement("gpu16@test", "gpu16", Capacity("cuda", 16 * GB, 64 * GB)), expiry_s=3600)
    db.dispose()
    routed = alice.submit(job_body(stack.big_model, stories_text))
    assert routed.status_code == 202, routed.text
    assert routed.json()["queue"] == "gpu16"
    assert routed.json()["spec"]["max_device_memory"] == 16 * GB and routed.json()["spec"]["max_host_memory"] == 64 * GB
    assert alice.cancel(routed.json()["id"]).json()["state"] == "cancelled"
    # budgets above every class's memory: routed as a worker caps them (within 16 GB, block by block there), the
    # job keeping what it asked
    asked = alice.submit(job_body(stack.big_model, stories_text, max_device_memory="100GB", max_host_memory="1TB"))
    assert asked.status_code == 202, asked.text
    assert asked.json()["queue"] == "gpu16" and asked.json()["spec"]["max_host_memory"] == 10**12
    assert alice.cancel(asked.json()["id"]).json()["state"] == "cancelled"

    ids = first.json()["id"], second.json()["id"]
    done = [alice.wait_done(job_id, timeout=120) for job_id in ids]
    assert all(job["state"] == "succeeded" for job in done), done
    # each ran on its class's worker: the worker that received the task ran it
    small_log, large_log = stack.procs["small"].output(), stack.procs["large"].output()
    assert ids[0] in small_log and ids[0] not in large_log
    assert ids[1] in large_log and ids[1] not in small_log
    assert alice.http.get("/jobs").json()["total"] == 5  # the refused job was never queued


def advertised_rows(settings: Settings, queue: str) -> list[tuple[str, int]]:
    db = Database(settings)
    try:
        with db.session() as session:
            return [(r.device, r.memory) for r in session.scalars(select(Worker).where(Worker.queue == queue))]
    finally:
        db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["shutdown", "killed"])
def test_the_advertiser_runs_in_a_process_of_its_own_and_withdraws_its_worker_when_it_stops(
    tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, stop: str
) -> None:
    """The worker's main process forks a pool process per job; the advertisement is renewed by a separate process
    (no thread of the main process imports modules or talks to the database while it forks), which exits once its
    worker is gone and deletes the worker's rows as it goes: when the worker shuts down (SIGTERM), and when the
    worker is killed (the advertiser finds its parent gone), so no job is routed to a class nobody serves."""
    import os
    import signal

    import psutil

    logs = tmp_path / "logs"
    logs.mkdir()
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url,
                        allowed_local_roots=[test_data])
    queue = f"advertised-{stop}"
    worker = start_worker(settings, logs, queue=queue, TWOSSP_WORKER_DEVICE="cpu", TWOSSP_WORKER_MEMORY=str(3 * GB))
    try:
        worker.wait_for_output("advertised worker", timeout=60)
        assert advertised_rows(settings, queue) == [("cpu", 3 * GB)]
        main = psutil.Process(worker.pid)
        advertisers = [p for p in main.children() if "worker.advertise" in " ".join(p.cmdline())]
        assert len(advertisers) == 1, [p.cmdline() for p in main.children()]
        # the worker alone, not its process group: a warm shutdown, or a kill that leaves it no word
        os.kill(worker.pid, signal.SIGTERM if stop == "shutdown" else signal.SIGKILL)
        advertisers[0].wait(timeout=20)  # psutil.TimeoutExpired if it outlived its worker
        assert advertised_rows(settings, queue) == []
        if stop == "shutdown":
            assert worker.popen.wait(timeout=20) == 0
        assert "withdrew worker" in worker.output()
    finally:
        worker.stop()


def test_a_worker_row_expires_after_a_few_advertise_intervals() -> None:
    """Without a withdrawal (a crashed machine) a row counts for routing for 3 advertise intervals by default."""
    assert Settings().worker_expiry_s == 3 * Settings().worker_advertise_interval_s < 3600
    assert Settings(worker_advertise_interval_s=5).worker_expiry_s == 15
    assert Settings(worker_advertise_interval_s=5, worker_expiry_s=600).worker_expiry_s == 600
    with pytest.raises(ValueError, match="must exceed worker_advertise_interval_s"):
        Settings(worker_advertise_interval_s=60, worker_expiry_s=30)


@pytest.mark.slow
def test_a_failed_advertisement_is_tried_again_within_seconds(tmp_path: Path) -> None:
    """A database that is down when the advertiser renews (here: not there yet) is tried again every few seconds,
    not an advertise interval later, so the worker's class is routable again soon after the database returns."""
    import os
    import threading

    from worker.advertise import RETRY_S, advertise_until_stopped

    home = tmp_path / "db-not-yet"
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{home}/twossp.db",
                        worker_advertise_interval_s=60)
    stop = threading.Event()
    advertiser = threading.Thread(
        target=advertise_until_stopped,
        args=(settings, "retry@h", ["retried"], Capacity("cpu", 3 * GB, 3 * GB), os.getppid(), stop),
    )
    advertiser.start()
    try:
        time.sleep(RETRY_S / 2)  # the first attempt has failed: there is no database yet
        assert advertiser.is_alive()
        home.mkdir()
        upgrade_head(settings)
        came_back = time.monotonic()
        deadline = came_back + 4 * RETRY_S
        while not advertised_rows(settings, "retried") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert advertised_rows(settings, "retried") == [("cpu", 3 * GB)], "not advertised within 4 retry periods"
        assert time.monotonic() - came_back < settings.worker_advertise_interval_s / 4
    finally:
        stop.set()
        advertiser.join(timeout=30)
    assert advertised_rows(settings, "retried") == []  # withdrawn as it stopped

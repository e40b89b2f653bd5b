"""Faults of the distributed shape, run for real: a whole worker class killed with SIGKILL, cancels in every stage
(loading the model, reading data in one call that cannot be interrupted, stage 1), and the messages of jobs cancelled
while queued.

Real processes on loopback: the API (`twossp serve` with a broker), the reaper, Celery workers of two classes (`small`
and `large`, CPU, their memories set between and above the plans of two stories260k jobs), a scratch PostgreSQL
database (--pg-dsn; created and dropped) and Redis (--redis-url). Settings are the defaults (advertise interval 10 s,
expiry 30 s, class grace 30 s, lease 60 s, reaper pass 10 s, cancel grace 0.3 s), with torch_threads=1 and the
heartbeat every 0.2 s (so the test sees each stage as it starts). Nothing here asserts a timing
(tests/svc/test_dead_class.py and tests/svc/test_cancel.py check the behaviour).

    .venv/bin/python bench/faults.py                       # all three faults (about 10 minutes on 2 cores)
    .venv/bin/python bench/faults.py --faults cancel --cancels 3

Writes bench/results/faults.json and prints the table of docs/service.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.settings import Settings  # noqa: E402
from twossp_core.example_data import example_data_dir  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}


# ---- processes -----------------------------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.popen = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        until(lambda: text in self.output() or self.popen.poll() is not None, timeout, f"{self.name}: {text}")
        if text not in self.output():
            raise RuntimeError(f"{self.name} exited:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=60)


def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class Stack:
    """The API, the reaper and workers on one database and broker."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[Proc] = []
        key = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "bench"], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.api = self.start("api", ["-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                                      "--log-level", "warning"])
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                                 timeout=60)
        until(self._up, 60, "the API")
        self.start("reaper", ["-m", "worker.reaper"])

    def _up(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, name: str, argv: list[str], **env: str) -> Proc:
        proc = Proc(name, [sys.executable, *argv], {**self.env, **env}, self.logs)
        self.procs.append(proc)
        return proc

    def worker(self, queue: str, **env: str) -> Proc:
        proc = self.start(f"worker-{queue}", [
            "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue, "--pool", "prefork", "--concurrency",
            "1", "--loglevel", "INFO", "-n", f"{queue}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat"], TWOSSP_WORKER_DEVICE="cpu", **env)
        proc.wait_for("advertised worker", timeout=180)
        return proc

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/jobs", json=body)
        response.raise_for_status()
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/jobs/{job_id}").json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.http.get(f"/jobs/{job_id}/events?limit=500").json()["items"]

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.kill(signal.SIGTERM)
        self.http.close()


# ---- data ------------------------------------------------------------------------------------------------------
def body(model: Path, text: Path, **overrides: Any) -> dict[str, Any]:
    return {"model": str(model), "sparsity": 0.375, "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:520"],
            "doc_separator": "<|endoftext|>", "seq_len": 512, "calibration_windows": 8, "measure_throughput": False,
            **overrides}


def host_need(job: dict[str, Any]) -> int:
    from twossp_core.plan.memory import spec_plan
    from twossp_core.plan.spec import parse_spec

    config = json.loads((Path(job["model"]) / "config.json").read_text())
    return spec_plan(parse_spec(job), config, device="cpu").host_peak


def make_models(data: Path, into: Path) -> dict[str, Path]:
    """A 103 M-parameter Llama (loading it in bfloat16 takes seconds) and an 8-block one (stage 1 takes seconds),
    random weights with the stories260k tokenizer; and a 12 MB single-document text (tokenizing it is one call)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    stories = data / "models" / "stories260k"
    made = {}
    for name, hidden, intermediate, heads in (("big", 1024, 2816, 8), ("slow", 256, 688, 8)):
        config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=8,
                             num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device="cpu")
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.02, generator=generator)
        model.save_pretrained(into / name)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(stories / file, into / name / file)
        made[name] = into / name
    text = (data / "text" / "tinystories-val-1000.txt").read_text()
    made["document"] = into / "one-long-document.txt"
    made["document"].write_text(text.replace("<|endoftext|>", "") * 15)
    return made


# ---- faults ----------------------------------------------------------------------------------------------------
def dead_class(stack: Stack, data: Path, queued: int, late: int) -> dict[str, Any]:
    """Kill every process of the `small` class (worker, pool, advertiser) with SIGKILL while it runs one job and
    `queued` more wait for it; submit `late` more right after (routed to it until its advertisement expires). Then
    start a small worker again and count the runs of its old messages."""
    stories, text = data / "models" / "stories260k", data / "text" / "tinystories-val-1000.txt"
    small_job, large_job = body(stories, text, seq_len=128), body(stories, text, seq_len=512)
    memory = {"small": (host_need(small_job) + host_need(large_job)) // 2, "large": host_need(large_job) + 200 * 10**6}
    small = stack.worker("small", TWOSSP_WORKER_MEMORY=str(memory["small"]))
    large = stack.worker("large", TWOSSP_WORKER_MEMORY=str(memory["large"]))
    ids = [stack.submit({**small_job, "seed": seed})["id"] for seed in range(1 + queued)]
    until(lambda: stack.job(ids[0])["state"] == "running", 300, "the first job to run")
    small.kill()
    killed = time.monotonic()
    late_jobs = [stack.submit({**small_job, "seed": 100 + i}) for i in range(late)]
    routed_dead = sum(job["queue"] == "small" for job in late_jobs)
    ids += [job["id"] for job in late_jobs]

    def moved() -> bool:
        return all(stack.job(j)["queue"] == "large" or stack.job(j)["state"] in TERMINAL for j in ids)

    until(moved, 600, "every job off the dead class", interval=0.5)
    moved_s = time.monotonic() - killed
    until(lambda: all(stack.job(j)["state"] in TERMINAL for j in ids), 1800, "every job to end", interval=1.0)
    done_s = time.monotonic() - killed
    before = {j: [e["id"] for e in stack.events(j) if e["kind"] == "started"] for j in ids}
    import redis

    client = redis.Redis.from_url(stack.env["TWOSSP_BROKER_URL"])
    old_messages = client.llen("small")
    back = stack.worker("small", TWOSSP_WORKER_MEMORY=str(memory["small"]))
    until(lambda: client.llen("small") == 0, 300, "the returning small worker to take the old messages")
    time.sleep(5)  # its last message handled
    jobs = {j: stack.job(j) for j in ids}
    after = {j: [e["id"] for e in stack.events(j) if e["kind"] == "started"] for j in ids}
    result = {
        "jobs": len(ids), "routed_to_the_dead_class_after_the_kill": routed_dead,
        "states": {state: sum(job["state"] == state for job in jobs.values()) for state in TERMINAL},
        "rerouted": sum(any(e["kind"] == "rerouted" for e in stack.events(j)) for j in ids),
        "requeued_after_the_lost_lease": sum(any(e["kind"] == "requeued" for e in stack.events(j)) for j in ids),
        "attempts": sorted(job["attempt"] for job in jobs.values()),
        "all_off_the_dead_class_s": round(moved_s, 1), "all_ended_s": round(done_s, 1),
        "lost": sum(job["state"] != "succeeded" for job in jobs.values()),
        "runs_after_the_class_returned": sum(len(after[j]) - len(before[j]) for j in ids),
        "old_messages": old_messages,
        "old_messages_dropped": back.output().count("message dropped, no job process started"),
    }
    for proc in (back, large):
        proc.kill(signal.SIGTERM)
    return result


def cancels(stack: Stack, data: Path, models: dict[str, Path], repeats: int) -> dict[str, Any]:
    """Cancel a running job `repeats` times in each of: loading a 103 M-parameter model, reading data in one call
    that cannot be interrupted (tokenizing a 12 MB document), and stage 1; seconds from the request to `cancelled`."""
    text = data / "text" / "tinystories-val-1000.txt"
    worker = stack.worker("twossp", TWOSSP_HEARTBEAT_INTERVAL_S="0.2")
    cases = {
        "load": (body(models["big"], text, dtype="bfloat16", calibration_windows=2), {"load"}),
        "data (one 12 MB document)": (body(models["slow"], text, calibration=[str(models["document"])]),
                                      {"calibration"}),
        "stage 1": (body(models["slow"], text, calibration_windows=12, sparsity=0.5), {"stage1"}),
    }
    results: dict[str, Any] = {}
    for name, (job, stages) in cases.items():
        runs = []
        for seed in range(repeats):
            job_id = stack.submit({**job, "seed": seed})["id"]
            until(lambda job_id=job_id, stages=stages: stack.job(job_id)["stage"] in stages, 600, name,
                  interval=0.02)
            asked = time.monotonic()
            stack.http.post(f"/jobs/{job_id}/cancel").raise_for_status()
            ended = until(lambda job_id=job_id: (j := stack.job(job_id))["state"] in TERMINAL and j, 120, "the end",
                          interval=0.02)
            runs.append({"seconds": round(time.monotonic() - asked, 2), "state": ended["state"],
                         "stage": ended["stage"], "killed": "killed" in (ended["error"] or "")})
        results[name] = runs
    worker.kill(signal.SIGTERM)
    return results


def cancelled_queued(stack: Stack, data: Path, count: int) -> dict[str, Any]:
    """`count` jobs submitted while no worker is live (they go to the default queue) and cancelled; then a worker of
    the default queue starts and takes their messages. Its log's timestamps time them: from the first message
    received to the last dropped."""
    stories, text = data / "models" / "stories260k", data / "text" / "tinystories-val-1000.txt"
    ids = [stack.submit({**body(stories, text), "seed": 1000 + i})["id"] for i in range(count)]
    for job_id in ids:
        stack.http.post(f"/jobs/{job_id}/cancel").raise_for_status()
    worker = stack.worker(Settings().celery_queue)
    until(lambda: worker.output().count("message dropped, no job process started") >= count, 600, "the drops",
          interval=0.1)
    log = worker.output()
    stamp = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[^\]]+\] "
    received = re.findall(stamp + r"Task twossp.run_job\[\S+\] received", log)
    dropped = re.findall(stamp + r"job \S+ is cancelled: message dropped", log)

    def at(value: str) -> float:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    result = {
        "messages": count, "dropped": len(dropped),
        "first_received_to_last_dropped_s": round(at(dropped[-1]) - at(received[0]), 2),
        "pool_processes": sorted(set(re.findall(r"/(ForkPoolWorker-\d+)\]", log))),
        "job_processes_started": log.count(" ended "),
        "started_events": sum(any(e["kind"] == "started" for e in stack.events(j)) for j in ids),
    }
    worker.kill(signal.SIGTERM)
    return result


# ---- the run ---------------------------------------------------------------------------------------------------
@contextmanager
def postgres_database(dsn: str) -> Iterator[str]:
    import psycopg

    name = f"twossp_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        params = dict(part.split("=", 1) for part in dsn.split())
        yield (f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
               f"{params.get('port', '5432')}/{name}")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def table(results: dict[str, Any]) -> str:
    lines = ["| fault | what happened | time to recover | jobs lost / duplicated |", "|---|---|---|---|"]
    dead = results.get("dead_class")
    if dead:
        lines.append(
            f"| `kill -9` of every process of the `small` class (worker, pool, advertiser) with 1 job running and "
            f"{dead['jobs'] - 1 - dead['routed_to_the_dead_class_after_the_kill']} queued, "
            f"{dead['routed_to_the_dead_class_after_the_kill']} more submitted after the kill | routed to `small` "
            f"until its advertisement expired; {dead['rerouted']} jobs re-routed to `large` after the grace "
            f"({dead['requeued_after_the_lost_lease']} of them first requeued when its lease ran out); a `small` "
            f"worker started afterwards dropped {dead['old_messages_dropped']} old messages | every job off the dead "
            f"class {dead['all_off_the_dead_class_s']:g} s after the kill, all ended {dead['all_ended_s']:g} s after "
            f"it | {dead['lost']} lost, {dead['runs_after_the_class_returned']} run again |")
    for stage, runs in results.get("cancel", {}).items():
        seconds = [r["seconds"] for r in runs]
        how = "killed at the grace" if all(r["killed"] for r in runs) else (
            "interrupted" if not any(r["killed"] for r in runs) else "interrupted or killed")
        stages = sorted({r["stage"] for r in runs})
        lines.append(f"| cancel of a running job in {stage} ({len(runs)} times) | {how}, ended `cancelled` in "
                     f"{', '.join(stages)} | {min(seconds):.2f}-{max(seconds):.2f} s from the request | - |")
    queued = results.get("cancelled_queued")
    if queued:
        lines.append(
            f"| {queued['messages']} messages of jobs cancelled while queued reach a worker | acknowledged and "
            f"dropped by {len(queued['pool_processes'])} pool process, {queued['job_processes_started']} job "
            f"processes started, no job started | {queued['first_received_to_last_dropped_s']:g} s from the first "
            f"message received to the last dropped | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default="dead_class,cancel,cancelled_queued")
    parser.add_argument("--cancels", type=int, default=5, help="cancels per stage")
    parser.add_argument("--queued", type=int, default=50, help="cancelled queued messages")
    parser.add_argument("--data", type=Path, default=example_data_dir(REPO, "TWOSSP_TEST_DATA"))
    parser.add_argument("--pg-dsn", default=os.environ.get("TWOSSP_TEST_PG_DSN",
                                                           "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    data = args.data.resolve()
    faults = args.faults.split(",")

    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
    }
    with tempfile.TemporaryDirectory(prefix="twossp-faults-") as tmp, postgres_database(args.pg_dsn) as url:
        from service.db.migrate import upgrade_head

        upgrade_head(Settings(database_url=url))
        work = Path(tmp)
        (work / "logs").mkdir()
        models = make_models(data, work) if "cancel" in faults else {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSSP_")}
        env.update({
            "PYTHONPATH": str(REPO), "TWOSSP_DATABASE_URL": url, "TWOSSP_BROKER_URL": args.redis_url,
            "TWOSSP_AUTO_MIGRATE": "false", "TWOSSP_DATA_DIR": str(work / "data"), "TWOSSP_TORCH_THREADS": "1",
            "TWOSSP_ALLOWED_LOCAL_ROOTS": f"{data}:{work}", "TWOSSP_RATE_LIMIT_PER_S": "1000000",
            "TWOSSP_RATE_LIMIT_BURST": "1000000", "TWOSSP_MAX_ACTIVE_JOBS_PER_USER": "10000", "OMP_NUM_THREADS": "1",
        })
        stack = Stack(env, work / "logs")
        try:
            if "dead_class" in faults:
                results["dead_class"] = dead_class(stack, data, queued=3, late=2)
                print(json.dumps(results["dead_class"]), flush=True)
            if "cancel" in faults:
                results["cancel"] = cancels(stack, data, models, args.cancels)
                print(json.dumps(results["cancel"]), flush=True)
            if "cancelled_queued" in faults:
                results["cancelled_queued"] = cancelled_queued(stack, data, args.queued)
                print(json.dumps(results["cancelled_queued"]), flush=True)
        finally:
            stack.close()
            redis.Redis.from_url(args.redis_url).flushdb()
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"load average {results['machine']['load_average_start']} -> {results['machine']['load_average_end']}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()

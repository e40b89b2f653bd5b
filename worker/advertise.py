"""A Celery worker advertises its class: the queue(s) it consumes, the device its jobs compute on and the memory it
offers them, in the `workers` table (renewed every `worker_advertise_interval_s`), so the API routes each job to a
class that can hold it.

The worker's main process, which never imports torch, detects its capacity before it forks the pool: the GPU's
memory comes from a short subprocess that asks `torch.cuda.mem_get_info` (only when it is not configured), the
host's from psutil. The advertisement itself is renewed by a small process of its own (`python -m worker.advertise`,
started once the worker is ready), which stops with the worker and deletes the worker's rows as it stops (the
worker shuts down and terminates it, or the worker is gone without a word: killed, crashed); only when the
advertiser itself cannot delete them (killed with it, the database down) do they linger, until
`worker_expiry_s`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import psutil

from service.db.session import Database
from service.settings import Settings
from service.workers import Advertisement, Capacity, advertise, withdraw
from twossp_core.plan.sizes import format_size

log = logging.getLogger(__name__)
GPU_PROBE = (
    "import torch\n"
    "print(torch.cuda.mem_get_info(0)[1] if torch.cuda.is_available() else 0, torch.cuda.device_count())\n"
)
GPU_PROBE_TIMEOUT_S = 300
PARENT_CHECK_S = 1.0  # how often the advertiser checks that its worker still runs
RETRY_S = 2.0  # how soon a failed advertisement is tried again (at most the advertise interval)


def parse_probe(output: str) -> tuple[int, int] | None:
    """(total memory of the first GPU, visible GPUs) from the probe's last line; None without a GPU."""
    total, count = (int(part) for part in output.strip().splitlines()[-1].split())
    return (total, max(count, 1)) if total else None


def probe_gpu_memory() -> tuple[int, int] | None:
    """Total memory of the first visible GPU and the number of visible GPUs, asked in a subprocess (so CUDA is
    never initialised here); None when there is none or torch cannot tell."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", GPU_PROBE], capture_output=True, text=True, timeout=GPU_PROBE_TIMEOUT_S,
            check=True,
        )
        return parse_probe(out.stdout)
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        log.warning("could not ask torch for the GPU's memory: %s", exc)
        return None


def detect_capacity(settings: Settings) -> Capacity:
    """The worker's capacity from the settings, detected where they leave it open."""
    host = settings.worker_host_memory or psutil.virtual_memory().total
    gpu: int | None = None
    gpus = 1
    if settings.worker_device == "cuda" and settings.worker_memory is not None:
        gpu = settings.worker_memory
    elif settings.worker_device != "cpu":
        probed = probe_gpu_memory()
        if probed is None and settings.worker_device == "cuda":
            raise RuntimeError("TWOSSP_WORKER_DEVICE=cuda but torch sees no GPU; set TWOSSP_WORKER_MEMORY")
        if probed is not None:
            gpu, gpus = probed
            if settings.worker_memory is not None:
                gpu, gpus = settings.worker_memory, 1
    if gpu is not None:
        return Capacity("cuda", gpu, host, settings.worker_gpus or gpus)
    memory = settings.worker_memory or host
    return Capacity("cpu", memory, memory)


_capacity: Capacity | None = None


def worker_capacity(settings: Settings) -> Capacity:
    """This worker's capacity, detected once per process: the worker's main process detects it before it forks
    the pool (`on_worker_init`), so pool processes inherit it; a process that has none detects it itself."""
    global _capacity
    if _capacity is None:
        _capacity = detect_capacity(settings)
    return _capacity


def advertise_until_stopped(
    settings: Settings, name: str, queues: list[str], capacity: Capacity, parent_pid: int, stop: threading.Event
) -> None:
    """Advertise at once, then every `worker_advertise_interval_s`, until `stop` is set or the process whose pid
    is `parent_pid` (the worker) is gone, then delete the worker's rows. A database that is down is tried again
    every `RETRY_S`, so the worker's class is routable again within seconds of the database's return, not an
    interval later (an outage longer than `worker_expiry_s` has expired it by then)."""
    db = Database(settings)
    first = True
    try:
        while not stop.is_set() and os.getppid() == parent_pid:
            wait_s = settings.worker_advertise_interval_s
            try:
                with db.session() as session:
                    for queue in queues:
                        advertise(session, Advertisement(name, queue, capacity), settings.worker_expiry_s)
                if first:
                    log.info(
                        "advertised worker %s: queues %s, %s, memory %s (%d GPU), host memory %s",
                        name, ",".join(queues), capacity.device, format_size(capacity.memory),
                        capacity.gpus if capacity.device == "cuda" else 0, format_size(capacity.host_memory),
                    )
                    first = False
            except Exception as exc:
                log.warning("could not advertise worker %s: %s", name, exc)
                wait_s = min(RETRY_S, wait_s)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and os.getppid() == parent_pid:
                if stop.wait(min(PARENT_CHECK_S, max(deadline - time.monotonic(), 0.0))):
                    return
    finally:
        try:
            with db.session() as session:
                deleted = withdraw(session, name, queues, settings.worker_expiry_s)
            log.info("withdrew worker %s: %d row(s) deleted", name, deleted)
        except Exception as exc:  # its rows expire after worker_expiry_s
            log.warning("could not withdraw worker %s: %s", name, exc)
        db.dispose()


_advertiser: subprocess.Popen[bytes] | None = None


def on_worker_init(sender: Any = None, **_: object) -> None:
    """Detect the capacity in the worker's main process before the pool forks, so each pool process inherits it
    (no pool process runs the GPU probe of its own). `sender`: the Celery worker, whose app holds the settings."""
    try:
        worker_capacity(sender.app.conf.twossp_settings)
    except Exception:
        log.exception("cannot tell this worker's memory; it is not advertised (jobs are not routed to it)")


def consumer_queues(consumer: object) -> list[str]:
    """The queues a Celery worker consumes (`-Q`, or the default queue)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = getattr(task_consumer, "queues", None) or []
    return sorted({q.name for q in queues})


def on_worker_ready(sender: Any = None, **_: object) -> None:
    """Start the advertiser in a process of its own. The worker's main process forks a pool process per job: a
    thread of it importing modules or talking to the database while it forks could leave the new pool process
    with a lock held by nobody, and the job it was given would never start. `sender`: the worker's consumer,
    whose app holds the settings."""
    global _advertiser
    queues = consumer_queues(sender)
    if not queues:
        log.warning("cannot tell which queues this worker consumes; it is not advertised")
        return
    if _capacity is None:  # on_worker_init logged why
        return
    command = [sys.executable, "-m", "worker.advertise", "--name", str(getattr(sender, "hostname", "worker")),
               "--parent", str(os.getpid()), "--capacity", json.dumps(asdict(_capacity))]
    for queue in queues:
        command += ["--queue", queue]
    _advertiser = subprocess.Popen(command, env={**os.environ, **sender.app.conf.twossp_settings.to_env()})


def on_worker_shutdown(**_: object) -> None:
    if _advertiser is not None and _advertiser.poll() is None:
        _advertiser.terminate()
        try:
            _advertiser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _advertiser.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.advertise", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the Celery node name")
    parser.add_argument("--queue", action="append", required=True, help="a queue the worker consumes (repeat)")
    parser.add_argument("--capacity", required=True, help="the worker's capacity (JSON)")
    parser.add_argument("--parent", type=int, required=True, help="the worker's pid: advertise while it runs")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level,
                        format="[%(asctime)s: %(levelname)s/Advertiser] %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    advertise_until_stopped(settings, args.name, args.queue, Capacity(**json.loads(args.capacity)), args.parent,
                            stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

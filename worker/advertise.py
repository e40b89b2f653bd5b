"""A Celery worker advertises its class: the queue(s) it consumes, the device its jobs compute on and the memory it
offers them, in the `workers` table (renewed every `worker_advertise_interval_s`), so the API routes each job to a
class that can hold it.

Runs in the worker's main process, which never imports torch: the GPU's memory comes from a short subprocess that
asks `torch.cuda.mem_get_info` (only when it is not configured), the host's from psutil.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from dataclasses import dataclass

import psutil

from service.db.session import Database
from service.settings import Settings
from service.workers import Advertisement, advertise
from twossp_core.memory import format_size

log = logging.getLogger(__name__)
GPU_PROBE = (
    "import torch\n"
    "print(torch.cuda.mem_get_info(0)[1] if torch.cuda.is_available() else 0, torch.cuda.device_count())\n"
)
GPU_PROBE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Capacity:
    device: str  # "cuda" or "cpu"
    memory: int  # the GPU's (cuda; each GPU's) or the host's (cpu)
    host_memory: int
    gpus: int = 1  # GPUs a job may spread over (cuda)


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
    """This worker's capacity, detected once per process: a pool process forked after the advertiser detected it
    inherits it, the first ones detect it themselves."""
    global _capacity
    if _capacity is None:
        _capacity = detect_capacity(settings)
    return _capacity


class Advertiser(threading.Thread):
    """Advertises the worker's queues at once, then renews them until stopped."""

    def __init__(self, settings: Settings, name: str, queues: list[str]) -> None:
        super().__init__(name="twossp-advertiser", daemon=True)
        self.settings, self.worker_name, self.queues = settings, name, queues
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            capacity = worker_capacity(self.settings)
        except Exception:
            log.exception("cannot tell this worker's memory; it is not advertised (jobs are not routed to it)")
            return
        db = Database(self.settings)
        first = True
        try:
            while True:
                try:
                    self.beat(db, capacity)
                    if first:
                        log.info(
                            "advertised worker %s: queues %s, %s, memory %s (%d GPU), host memory %s",
                            self.worker_name, ",".join(self.queues), capacity.device, format_size(capacity.memory),
                            capacity.gpus if capacity.device == "cuda" else 0, format_size(capacity.host_memory),
                        )
                        first = False
                except Exception as exc:  # the database is down: try again at the next interval
                    log.warning("could not advertise worker %s: %s", self.worker_name, exc)
                finally:
                    db.engine.dispose()  # no connection stays open across the pool's forks
                if self._halt.wait(self.settings.worker_advertise_interval_s):
                    return
        finally:
            db.dispose()

    def beat(self, db: Database, capacity: Capacity) -> None:
        with db.session() as session:
            for queue in self.queues:
                advertise(
                    session,
                    Advertisement(self.worker_name, queue, capacity.device, capacity.memory, capacity.host_memory,
                                  capacity.gpus),
                    self.settings.worker_expiry_s,
                )

    def stop(self) -> None:
        self._halt.set()


_advertiser: Advertiser | None = None


def consumer_queues(consumer: object) -> list[str]:
    """The queues a Celery worker consumes (`-Q`, or the default queue)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = getattr(task_consumer, "queues", None) or []
    return sorted({q.name for q in queues})


def on_worker_ready(sender: object = None, **_: object) -> None:
    global _advertiser
    from worker.celery_app import app

    queues = consumer_queues(sender)
    if not queues:
        log.warning("cannot tell which queues this worker consumes; it is not advertised")
        return
    _advertiser = Advertiser(app.conf.twossp_settings, str(getattr(sender, "hostname", "worker")), queues)
    _advertiser.start()


def on_worker_shutdown(**_: object) -> None:
    if _advertiser is not None:
        _advertiser.stop()

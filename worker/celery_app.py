"""The Celery application: `celery -A worker.celery_app worker -Q twossp --concurrency 1`.

One job per pool process at a time (prefork pool, prefetch 1), late acks so a lost worker's message is
redelivered. The task runs each job in a process of its own and supervises it (`worker/supervise.py`: cancels,
the job's time limit); neither the worker's main process nor its pool processes import torch, so CUDA is only
ever initialised in a job's process, and pool processes are kept across messages (a dropped message costs no
process start). Celery's own hard time limit is only a backstop, `SUPERVISOR_MARGIN_S` past the job's. Once ready,
the worker advertises the queues it consumes and its memory (`worker/advertise.py`, from a process of its own);
without `-Q` it consumes `TWOSSP_WORKER_QUEUE`.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

from service.settings import Settings
from worker.advertise import on_worker_init, on_worker_ready, on_worker_shutdown

SUPERVISOR_MARGIN_S = 60.0


def make_celery(settings: Settings) -> Celery:
    if settings.broker_url is None:
        raise RuntimeError("TWOSSP_BROKER_URL is not set: the Celery worker needs a broker (e.g. redis://...)")
    app = Celery("twossp", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_default_queue=settings.worker_queue or settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        # the supervisor stops the job at its soft limit and kills it at its hard one; this only ends a supervisor
        # that failed to
        task_time_limit=settings.job_time_limit_s + SUPERVISOR_MARGIN_S,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # a message must not be redelivered while its job may still legitimately be running
        broker_transport_options={"visibility_timeout": int(settings.job_time_limit_s) + 600},
    )
    app.conf.twossp_settings = settings
    return app


app = make_celery(Settings())
worker_init.connect(on_worker_init, weak=False)
worker_ready.connect(on_worker_ready, weak=False)
worker_shutdown.connect(on_worker_shutdown, weak=False)

"""The Celery application: `celery -A worker.celery_app worker -Q twossp --concurrency 1`.

One job per process (prefork pool, prefetch 1, a fresh child per job), late acks so a lost worker's message
is redelivered, and Celery's soft/hard time limits from the settings. The parent process never imports
torch, so CUDA is only ever initialised in the child running a job. Once ready, the worker advertises the queues it
consumes and its memory (`worker/advertise.py`, from a process of its own); without `-Q` it consumes
`TWOSSP_WORKER_QUEUE`.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

from service.settings import Settings
from worker.advertise import on_worker_init, on_worker_ready, on_worker_shutdown


def make_celery(settings: Settings) -> Celery:
    if settings.broker_url is None:
        raise RuntimeError("TWOSSP_BROKER_URL is not set: the Celery worker needs a broker (e.g. redis://...)")
    app = Celery("twossp", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_default_queue=settings.worker_queue or settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        # a soft limit equal to the hard one leaves no time to stop cooperatively: the job is killed at the limit
        task_soft_time_limit=(
            settings.job_soft_time_limit_s if settings.job_soft_time_limit_s < settings.job_time_limit_s else None
        ),
        task_time_limit=settings.job_time_limit_s,
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

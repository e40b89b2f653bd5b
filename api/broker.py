"""Publishing job ids to workers: Celery over Redis when a broker is configured, an in-process wake-up otherwise.

The API never imports the worker package: with Celery it sends the task by name.
"""

from __future__ import annotations

import threading
from typing import Protocol

RUN_JOB_TASK = "twossp.run_job"


class Broker(Protocol):
    kind: str

    def publish(self, job_id: str) -> None: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class EmbeddedBroker:
    """No message transport: the embedded worker polls the database; publishing only wakes it up."""

    kind = "embedded"

    def __init__(self) -> None:
        self.wake = threading.Event()

    def publish(self, job_id: str) -> None:
        self.wake.set()

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


class CeleryBroker:
    kind = "celery"

    def __init__(self, broker_url: str, queue: str) -> None:
        from celery import Celery

        self.queue = queue
        self.app = Celery("twossp-publisher", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
            task_default_queue=queue,
        )

    def publish(self, job_id: str) -> None:
        self.app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=self.queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.3, "interval_max": 1},
        )

    def check(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def close(self) -> None:
        self.app.close()


def make_broker(broker_url: str | None, queue: str) -> Broker:
    return EmbeddedBroker() if broker_url is None else CeleryBroker(broker_url, queue)

"""Publishing job ids to workers: Celery over Redis when a broker is configured, an in-process wake-up otherwise.

The API never imports the worker package: with Celery it sends the task by name.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from typing import Protocol

RUN_JOB_TASK = "twossp.run_job"


class Broker(Protocol):
    kind: str

    def publish(self, job_id: str, queue: str | None = None) -> None:
        """Send the job to `queue` (the worker class it was routed to; None: the default queue)."""
        ...

    def stop(self, job_id: str) -> bool:
        """Kill the job's run wherever it executes; False if this transport cannot (its worker does it)."""
        ...

    def check(self) -> None: ...

    def held(self, queues: Collection[str] = ()) -> set[str] | None:
        """Ids of the jobs whose messages the broker holds (waiting in the default queue or one of `queues`, or
        delivered and not yet acknowledged), or None when this transport cannot tell."""
        ...

    def close(self) -> None: ...


class EmbeddedBroker:
    """No message transport: the embedded worker polls the database; publishing only wakes it up."""

    kind = "embedded"

    def __init__(self) -> None:
        self.wake = threading.Event()

    def publish(self, job_id: str, queue: str | None = None) -> None:
        self.wake.set()

    def stop(self, job_id: str) -> bool:
        return False  # the embedded worker kills its own child once the cancel grace is over

    def check(self) -> None:
        return None

    def held(self, queues: Collection[str] = ()) -> set[str] | None:
        return None  # the embedded worker reads the database itself: there is no message to lose

    def close(self) -> None:
        return None


class CeleryBroker:
    kind = "celery"

    def __init__(self, broker_url: str, queue: str) -> None:
        from celery import Celery

        self.broker_url = broker_url
        self.queue = queue
        self.app = Celery("twossp-publisher", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
            task_default_queue=queue,
        )

    def publish(self, job_id: str, queue: str | None = None) -> None:
        # the task id is the job id, so a run can be revoked knowing only the job
        self.app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            task_id=job_id,
            queue=queue or self.queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.3, "interval_max": 1},
        )

    def stop(self, job_id: str) -> bool:
        """Revoke the job's task on every worker: the pool process running it is killed, and a copy of the
        message still in a queue is discarded when it arrives."""
        self.app.control.revoke(job_id, terminate=True, signal="SIGKILL")
        return True

    def check(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def held(self, queues: Collection[str] = ()) -> set[str] | None:
        """Redis transport: the queue lists plus kombu's `unacked` hash (late-acked messages being worked on)."""
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return None
        import redis

        client = redis.Redis.from_url(self.broker_url, socket_timeout=5, socket_connect_timeout=3)
        try:
            ids: set[str] = set()
            for queue in sorted({self.queue, *queues}):
                for raw in client.lrange(queue, 0, -1):
                    ids.add(_task_id(_loads(raw)))
            for raw in client.hvals(UNACKED_KEY):  # [message, exchange, routing key]
                entry = _loads(raw)
                ids.add(_task_id(entry[0] if isinstance(entry, list) and entry else None))
            ids.discard("")
            return ids
        finally:
            client.close()

    def close(self) -> None:
        self.app.close()


def make_broker(broker_url: str | None, queue: str) -> Broker:
    return EmbeddedBroker() if broker_url is None else CeleryBroker(broker_url, queue)


UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key`)


def _loads(raw: bytes | str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _task_id(message: object) -> str:
    """The task id (= job id) of a kombu message as stored in Redis; "" if unreadable."""
    if not isinstance(message, dict) or not isinstance(message.get("headers"), dict):
        return ""
    return str(message["headers"].get("id") or "")

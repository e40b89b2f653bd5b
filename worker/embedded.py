"""The embedded worker: a thread beside the API that runs queued jobs one at a time, each in a child
process it supervises (`worker/supervise.py`: CUDA never touches the API process, and a cancel or a time limit
can interrupt or kill it), and runs the reaper/dispatcher between jobs. Used when no broker is configured.
"""

from __future__ import annotations

import logging
import threading

from service import lifecycle
from service.broker import EmbeddedBroker
from service.db.session import Database
from service.settings import Settings
from service.store import make_store
from worker.maintenance import Reaper
from worker.supervise import run_job_process

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, settings: Settings, broker: EmbeddedBroker | None = None) -> None:
        self.settings = settings
        self.broker = broker or EmbeddedBroker()
        self.db: Database | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.db = Database(self.settings)
        self._thread = threading.Thread(target=self._loop, name="twossp-embedded-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.broker.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.db is not None:
            self.db.dispose()

    # loop ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        assert self.db is not None
        reaper = Reaper(self.db, self.broker, self.settings, make_store(self.settings))
        while not self._stop.is_set():
            try:
                reaper.run()
                job_id = self._next_job()
                if job_id is not None:
                    self._run_child(job_id)
                    continue
            except Exception:
                log.exception("embedded worker pass failed; retrying")
            self.broker.wake.wait(self.settings.embedded_poll_s)
            self.broker.wake.clear()

    def _next_job(self) -> str | None:
        assert self.db is not None
        with self.db.session() as session:
            return lifecycle.next_queued(session)

    def _run_child(self, job_id: str) -> None:
        assert self.db is not None
        run_job_process(self.settings, self.db, job_id, stop=self._stop)

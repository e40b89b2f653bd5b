"""The embedded worker: a thread beside the API that runs queued jobs one at a time, each in a child
process (so CUDA never touches the API process and a time limit or a cancel can kill it), and runs the
reaper/dispatcher between jobs. Used when no broker is configured.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from service import lifecycle
from service.broker import EmbeddedBroker
from service.db.models import Job, JobState
from service.db.session import Database
from service.settings import Settings
from service.store import make_store
from worker.maintenance import Reaper

log = logging.getLogger(__name__)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class EmbeddedWorker:
    def __init__(self, settings: Settings, broker: EmbeddedBroker | None = None) -> None:
        self.settings = settings
        self.broker = broker or EmbeddedBroker()
        self.db: Database | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None

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

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSSP_")}
        env.update(self.settings.to_env())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        return env

    def _run_child(self, job_id: str) -> None:
        assert self.db is not None
        scratch = self.settings.scratch_root
        scratch.mkdir(parents=True, exist_ok=True)
        child = subprocess.Popen(
            [sys.executable, "-m", "worker.run_one", job_id],
            env=self._child_env(),
            cwd=scratch,
            start_new_session=True,
        )
        self._child = child
        worker_id_suffix = f":{child.pid}"
        started = time.monotonic()
        cancel_seen: float | None = None
        reason: str | None = None
        try:
            while child.poll() is None:
                if self._stop.wait(0.25):
                    reason = "shutdown"
                    break
                elapsed = time.monotonic() - started
                job = self._job(job_id)
                if job is None:
                    continue
                if elapsed > job.time_limit_s:
                    reason = "timeout"
                    break
                if job.cancel_requested and job.state == JobState.running.value:
                    cancel_seen = cancel_seen or time.monotonic()
                    if time.monotonic() - cancel_seen > self.settings.cancel_grace_s:
                        reason = "cancelled"
                        break
        finally:
            if child.poll() is None:
                _kill_group(child)
            self._child = None
        if reason is not None and reason != "shutdown":
            self._record_kill(job_id, worker_id_suffix, reason)
        elif reason == "shutdown":
            self._requeue(job_id, worker_id_suffix)

    def _job(self, job_id: str) -> Job | None:
        assert self.db is not None
        with self.db.session() as session:
            return session.get(Job, job_id)

    def _record_kill(self, job_id: str, worker_suffix: str, reason: str) -> None:
        assert self.db is not None
        with self.db.session() as session:
            lifecycle.kill(session, job_id, worker_suffix, reason)

    def _requeue(self, job_id: str, worker_suffix: str) -> None:
        """Shutting down mid-job: give the attempt back so the job runs again on the next start."""
        assert self.db is not None
        with self.db.session() as session:
            lifecycle.requeue(session, job_id, worker_suffix)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait(timeout=30)

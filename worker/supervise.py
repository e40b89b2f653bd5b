"""Running one job in a process of its own and watching it: the embedded worker and the Celery task both do it here.

The job runs in `python -m worker.run_one JOB_ID` (a fresh interpreter: torch and CUDA live only there). Every
`POLL_S` the supervisor reads the job's row:

- a cancel of the running attempt interrupts the job's process at once (`INTERRUPT_SIGNAL`: the pipeline unwinds
  from wherever it is, loading the model or reading data included, and records `cancelled`); a process still on
  the attempt `cancel_grace_s` later (stuck in one call that cannot be interrupted, such as tokenizing one huge
  document) is killed and the job recorded `cancelled` (killed);
- past the job's time limit (counted from its claim) the process is killed and the job recorded `failed`
  (timeout);
- with `stop` set (the embedded worker shuts down) the process is killed and the attempt given back (`queued`).

Every record is fenced by the process's worker id (`host:pid`), so a supervisor never ends another attempt. The
supervisor's own database errors never stop the job: it tries again at the next poll.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import lifecycle
from service.db.models import Job, JobState
from service.db.session import Database
from service.settings import Settings
from service.workers import Capacity

log = logging.getLogger(__name__)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.2  # how often the supervisor reads the job's row
INTERRUPT_SIGNAL = signal.SIGUSR1  # run_one raises Interrupted in the job's main thread on it
CLAIM_UNAVAILABLE_EXIT = 75  # run_one's exit status when the claim failed on a database error (the job stays queued)
EXIT_AFTER_OUTCOME_S = 30.0  # a process whose job is recorded finished is killed if it is still there this long after


@dataclass(frozen=True)
class _Row:
    state: str
    cancel_requested: bool
    time_limit_s: float
    worker_id: str | None


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSSP_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


def run_job_process(
    settings: Settings,
    db: Database,
    job_id: str,
    *,
    delivery: lifecycle.Delivery | None = None,
    capacity: Capacity | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the job in its own process and supervise it until the process exits; its exit status
    (CLAIM_UNAVAILABLE_EXIT: the job is still queued; negative: killed by that signal)."""
    scratch = settings.scratch_root
    scratch.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "worker.run_one", job_id]
    if delivery is not None:
        command += ["--queue", delivery.queue]
    if capacity is not None:
        command += ["--capacity", json.dumps(asdict(capacity))]
    child = subprocess.Popen(command, env=child_env(settings), cwd=scratch, start_new_session=True)
    watch = _Watch(settings, db, job_id, child)
    try:
        while child.poll() is None:
            if stop is not None and stop.is_set():
                watch.kill()
                watch.give_back()
                break
            if watch.check():
                break
            if stop is not None:
                stop.wait(POLL_S)
            else:
                time.sleep(POLL_S)
    finally:
        if child.poll() is None:
            watch.kill()
    return child.returncode


class _Watch:
    """One supervised job process."""

    def __init__(self, settings: Settings, db: Database, job_id: str, child: subprocess.Popen[bytes]) -> None:
        self.settings, self.db, self.job_id, self.child = settings, db, job_id, child
        self.suffix = f":{child.pid}"  # its worker id is host:pid
        self.claimed: float | None = None  # when the process was first seen running the job (its claim)
        self.outcome_seen: float | None = None
        self.db_failing = False

    def check(self) -> bool:
        """One poll; True when the process was killed (and its outcome recorded)."""
        row = self._row()
        if row is None:
            return False
        ours = row.worker_id is not None and row.worker_id.endswith(self.suffix)
        if row.state != JobState.running.value or not ours:
            if row.state in (JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value):
                self.outcome_seen = self.outcome_seen or time.monotonic()
                if time.monotonic() - self.outcome_seen > EXIT_AFTER_OUTCOME_S:
                    log.warning("job %s is %s but its process has not exited: killed", self.job_id, row.state)
                    self.kill()
                    return True
            return False  # not claimed yet, or another attempt's: the process learns it from its claim or heartbeat
        self.claimed = self.claimed or time.monotonic()
        if time.monotonic() - self.claimed > row.time_limit_s:
            self.kill()
            recorded = self.record_kill("timeout")
            log.warning("job %s killed at its hard time limit (%gs); recorded: %s", self.job_id, row.time_limit_s,
                        recorded)
            return True
        if row.cancel_requested:
            log.info("job %s: cancel requested; interrupting its process", self.job_id)
            self._signal(INTERRUPT_SIGNAL)
            try:
                self.child.wait(timeout=self.settings.cancel_grace_s)
                return False  # it stopped (and recorded `cancelled`, unless the run was fenced out)
            except subprocess.TimeoutExpired:
                pass
            self.kill()
            recorded = self.record_kill("cancelled")
            log.warning("job %s did not stop within the cancel grace (%gs): killed; recorded: %s", self.job_id,
                        self.settings.cancel_grace_s, recorded)
            return True
        return False

    def _row(self) -> _Row | None:
        try:
            with self.db.session() as session:
                columns = (Job.state, Job.cancel_requested, Job.time_limit_s, Job.worker_id)
                found = session.execute(select(*columns).where(Job.id == self.job_id)).first()
        except SQLAlchemyError as exc:
            if not self.db_failing:
                log.warning("could not read job %s (tried again every %g s): %s", self.job_id, POLL_S, exc)
            self.db_failing = True
            return None
        if self.db_failing:
            log.info("job %s can be read again", self.job_id)
            self.db_failing = False
        return None if found is None else _Row(*found)

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.child.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the job's process group (the job and anything it started)."""
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.child.wait(timeout=30)

    def record_kill(self, reason: str) -> bool:
        """The killed process's attempt ends: `failed` (reason "timeout") or `cancelled` (killed)."""
        return self._record(lambda session: lifecycle.kill(session, self.job_id, self.suffix, reason))

    def give_back(self) -> bool:
        """The killed process's attempt goes back to `queued` (the worker shuts down mid-job)."""
        return self._record(lambda session: lifecycle.requeue(session, self.job_id, self.suffix))

    def _record(self, write: Callable[[Session], bool]) -> bool:
        """A write fenced by this process's worker id; False when fenced out or the database is unreachable (the
        reaper then ends the attempt once its lease runs out)."""
        try:
            with self.db.session() as session:
                return write(session)
        except SQLAlchemyError as exc:
            log.warning("could not record the end of job %s (the reaper will, after its lease): %s", self.job_id, exc)
            return False

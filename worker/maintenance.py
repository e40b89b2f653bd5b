"""The periodic reaper and outbox dispatcher.

- A running job whose lease expired lost its worker (killed, crashed, partitioned): it is re-queued with a
  new dispatch if attempts remain, failed with `timeout` if it ran past its time limit, otherwise failed.
- A running job asked to cancel that is still running a lease period past `cancel_grace_s` is killed through the
  broker and recorded as cancelled: the job's supervisor (`worker/supervise.py`) interrupts it at once and kills it
  at the grace, so this only ends a job whose supervisor failed to. The embedded broker cannot do this.
- A queued job that was never handed to the broker (the API died or the broker was down right after the
  commit) is published; so is one whose message the broker no longer holds (`redispatch_unheld_after_s`
  after its dispatch: a Redis restart without persistence), and one that has waited suspiciously long.
- A queued job whose worker class has had no live worker for `worker_class_grace_s` is re-routed to the live
  class that holds it (and published there), or failed naming the class it needs when no live class does. While
  no class at all has a live worker, queued jobs wait.
- A sweep whose cells all ended and whose comparison nobody wrote (its last cell was killed or reaped, or the
  process that ended it died first) gets its comparison written here (worker/sweeps.py).
Every `TWOSSP_ARTIFACT_GC_INTERVAL_S` it also deletes the artifact prefixes of attempts that never published
a manifest, and the shared dense artifacts no cell read or wrote for `TWOSSP_SHARED_ARTIFACT_TTL_DAYS`
(worker/shared.py `expire_shared_artifacts`). Every transition is a compare-and-set in `service.lifecycle`, so
several reapers may run at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from service import lifecycle
from service.broker import Broker
from service.db.models import JobState
from service.db.session import Database
from service.db.types import utcnow
from service.routing import NoWorkerFits, WorkerClass, choose_queue
from service.settings import Settings
from service.store import ArtifactStore
from service.workers import worker_classes
from twossp_core.errors import TwosspError
from twossp_core.plan.spec import parse_job_spec
from twossp_core.preflight import local_config
from worker.shared import expire_shared_artifacts

log = logging.getLogger(__name__)


@dataclass
class MaintenanceResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    rerouted: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)  # sweeps whose comparison this pass wrote
    expired_shared: list[str] = field(default_factory=list)  # shared artifacts this pass deleted (unused too long)


def reap_expired_leases(db: Database, result: MaintenanceResult) -> None:
    now = utcnow()
    buckets = {
        JobState.queued.value: result.requeued,
        JobState.failed.value: result.failed,
        JobState.cancelled.value: result.cancelled,
    }
    with db.session() as session:
        for job_id, attempt in lifecycle.expired_leases(session, now):
            state = lifecycle.reap(session, job_id, attempt, now)
            if state is not None:
                buckets[state].append(job_id)


def stop_overdue_cancels(db: Database, broker: Broker, settings: Settings, result: MaintenanceResult) -> None:
    with db.session() as session:
        for job_id, attempt in lifecycle.overdue_cancels(session, settings.cancel_grace_s + settings.lease_seconds):
            if not broker.stop(job_id):
                return  # this transport cannot kill a run; the embedded worker kills its own child
            if lifecycle.cancel_killed(session, job_id, attempt):
                log.warning("job %s: killed %g s after its cancel", job_id,
                            settings.cancel_grace_s + settings.lease_seconds)
                result.cancelled.append(job_id)


def dispatch_outbox(db: Database, broker: Broker, settings: Settings, result: MaintenanceResult) -> None:
    with db.session() as session:
        pending = lifecycle.undispatched(session, settings.dispatch_grace_s, settings.redispatch_after_s)
        held = broker.held(lifecycle.queued_queues(session))
        if held is not None:  # a broker that lost messages (restarted without persistence) gets them again
            lost = lifecycle.unheld(session, held, settings.redispatch_unheld_after_s)
            if lost:
                log.warning("%d queued jobs are not in the broker; publishing them again", len(lost))
            pending = list(dict.fromkeys([*pending, *lost]))
        for job_id in pending:
            if lifecycle.dispatch(session, broker, job_id):
                result.dispatched.append(job_id)


def reroute_stranded(db: Database, broker: Broker, settings: Settings, result: MaintenanceResult) -> None:
    """Move the jobs stranded in a dead worker class to a live class, or fail them (see the module's doc)."""
    if broker.kind == "embedded":
        return  # one in-process worker takes every job: there are no classes
    now = utcnow()
    with db.session() as session:
        classes = worker_classes(session, settings.worker_expiry_s)
        if not classes:
            return  # no worker at all (yet): the jobs wait, and /readyz says so
        jobs = lifecycle.stranded(session, {c.queue for c in classes}, settings.celery_queue,
                                  settings.worker_class_grace_s, now)
        for job in jobs:
            dead = f"worker class '{job.queue or settings.celery_queue}' has had no live worker since " \
                   f"{job.dead_since:%Y-%m-%d %H:%M:%S} UTC ({(now - job.dead_since).total_seconds():.0f} s)"
            target, budgets, refusal = _new_class(job, classes)
            if target is None:
                error = f"{dead}, and no live worker class can run the job: {refusal}"
                if lifecycle.fail_stranded(session, job, error):
                    log.warning("job %s: %s", job.job_id, error)
                    result.failed.append(job.job_id)
                continue
            spec = {**job.spec, **budgets}
            detail = f"{dead}: re-routed to '{target}'" + (f" with budgets {budgets}" if budgets else "")
            if lifecycle.reroute(session, job, target, spec, detail):
                log.warning("job %s: %s", job.job_id, detail)
                result.rerouted.append(job.job_id)
                if lifecycle.dispatch(session, broker, job.job_id):
                    result.dispatched.append(job.job_id)


def write_sweep_comparisons(db: Database, store: ArtifactStore, settings: Settings, result: MaintenanceResult) -> None:
    """Write the comparison of every sweep whose cells all ended and that nobody writes it for."""
    from worker.sweeps import write_comparison_if_ready

    with db.session() as session:
        waiting = lifecycle.awaiting_comparison(session)
    for parent_id in waiting:
        try:
            state = write_comparison_if_ready(db, store, settings, parent_id, f"reaper@{socket.gethostname()}:"
                                              f"{os.getpid()}")
        except Exception:
            log.exception("writing the comparison of sweep %s failed; next pass tries again", parent_id)
            continue
        if state is not None:
            result.sweeps.append(parent_id)


def _new_class(job: lifecycle.Stranded, classes: list[WorkerClass]) -> tuple[str | None, dict[str, int], str]:
    """The live class that holds the job and the budgets it gives it, or (None, {}, why none does)."""
    try:
        spec = parse_job_spec(job.kind, job.spec)
    except TwosspError as exc:
        return None, {}, f"its spec no longer reads: {exc}"
    try:
        config = local_config(spec.model, relative_paths=False)
    except TwosspError:  # not readable here: planned as a hub model is (the largest class), the worker will tell
        config = None
    try:
        route = choose_queue(spec, config, classes)
    except NoWorkerFits as exc:
        return None, {}, str(exc)
    return route.queue, route.budgets, ""


def run_maintenance(db: Database, broker: Broker, settings: Settings, *, reap_leases: bool = True) -> MaintenanceResult:
    result = MaintenanceResult()
    if reap_leases:
        reap_expired_leases(db, result)
    stop_overdue_cancels(db, broker, settings, result)
    reroute_stranded(db, broker, settings, result)
    # re-queued jobs go out at once; the grace only protects fresh submissions the API is still publishing
    with db.session() as session:
        for job_id in result.requeued:
            if lifecycle.dispatch(session, broker, job_id):
                result.dispatched.append(job_id)
    dispatch_outbox(db, broker, settings, result)
    return result


def collect_incomplete_attempts(db: Database, store: ArtifactStore) -> list[str]:
    """Delete the artifact prefixes of attempts that never published a manifest (failed, lost or cancelled
    mid-upload), except the attempt a running job is on. Prefixes of unknown jobs are left alone."""
    incomplete = [slot for slot, has_manifest in store.attempts().items() if not has_manifest]
    if not incomplete:
        return []
    removed: list[str] = []
    for start in range(0, len(incomplete), 500):
        chunk = incomplete[start : start + 500]
        with db.session() as session:
            jobs = lifecycle.attempt_states(session, {job_id for job_id, _ in chunk})
        for job_id, attempt in chunk:
            if job_id not in jobs:
                continue
            state, current = jobs[job_id]
            if state == JobState.running.value and attempt == current:
                continue  # still uploading, perhaps
            prefix = f"jobs/{job_id}/attempt-{attempt}/"
            store.delete_prefix(prefix)
            removed.append(prefix)
    if removed:
        log.info("deleted %d incomplete attempt prefixes", len(removed))
    return removed


class Reaper:
    """Periodic maintenance that remembers database outages: a lease that ran out while the database was
    unreachable could not be renewed, so after an outage the workers get one lease period to renew their
    leases (and record finished runs) before expired leases are reaped."""

    def __init__(self, db: Database, broker: Broker, settings: Settings, store: ArtifactStore | None = None) -> None:
        self.db, self.broker, self.settings, self.store = db, broker, settings, store
        self._db_failed = False
        self._hold_until = 0.0
        self._next_gc = time.monotonic() + settings.reaper_interval_s  # not in the very first pass

    def run(self) -> MaintenanceResult:
        reap = not self._db_failed and time.monotonic() >= self._hold_until
        try:
            result = run_maintenance(self.db, self.broker, self.settings, reap_leases=reap)
        except SQLAlchemyError:
            self._db_failed = True
            raise
        if self._db_failed:
            self._db_failed = False
            self._hold_until = time.monotonic() + self.settings.lease_seconds
            log.warning("database reachable again: reaping expired leases after %g s", self.settings.lease_seconds)
        if self.store is not None:
            write_sweep_comparisons(self.db, self.store, self.settings, result)
        if self.store is not None and time.monotonic() >= self._next_gc:
            self._next_gc = time.monotonic() + self.settings.artifact_gc_interval_s
            try:
                collect_incomplete_attempts(self.db, self.store)
            except Exception:
                log.exception("collecting incomplete artifact attempts failed; next try in %g s",
                              self.settings.artifact_gc_interval_s)
            try:
                result.expired_shared = expire_shared_artifacts(self.db, self.store, self.settings)
            except Exception:
                log.exception("expiring shared artifacts failed; next try in %g s",
                              self.settings.artifact_gc_interval_s)
        return result

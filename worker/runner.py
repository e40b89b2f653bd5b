"""Running one job: claim it, run the pipeline (a prune job, a sweep's cell, or a sweep submitted before sweeps had
cells) with a heartbeat, upload the output, record the outcome. After a sweep's cell it writes the sweep's comparison
when that cell was the sweep's last (worker/sweeps.py).

Plain code, run in the job's own process (`python -m worker.run_one`, which the Celery task and the embedded worker
start and supervise: `worker/supervise.py`). The job row is the source of truth; every write is fenced by the
attempt number, so a stale attempt can never overwrite a newer one. A cancel stops the job at its next safe point
(the heartbeat notices it), or at once when the supervisor interrupts the process (`interrupt`): the pipeline then
unwinds from wherever it is, loading the model or reading data included.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import lifecycle
from service.db.models import JobState
from service.db.session import Database
from service.lifecycle import Claim, Delivery
from service.paths import PathRefused
from service.records import StageMark
from service.settings import Settings
from service.store import ArtifactStore, make_store
from service.workers import Capacity
from twossp_core.plan.spec import PruneSpec, SweepSpec, parse_job_spec
from twossp_core.plan.tasks import TaskData
from worker.inputs import pinned_inputs
from worker.progress import ProgressTracker, job_stages

log = logging.getLogger(__name__)
DONE_STAGE = "done"  # the stage a succeeded job reports (with progress 100)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ClaimUnavailable(Exception):
    """The database could not be asked whether the job is claimable; the job stays queued."""


class Interrupted(BaseException):
    """Raised in the job's main thread when its supervisor interrupts it for a cancel. A BaseException, so that the
    `except Exception` handlers of the libraries it runs through (transformers' loading) do not swallow it."""


class StopReason(enum.StrEnum):
    """Why the heartbeat asks the pipeline to stop at its next safe point."""

    cancelled = "cancelled"
    timeout = "timeout"
    fenced = "fenced"  # a newer attempt owns the job: this one must not write anything


class Heartbeat(threading.Thread):
    """Renews the lease, publishes progress, and notices cancellation, fencing and the soft time limit."""

    def __init__(self, runner: JobRunner, claim: Claim, tracker: ProgressTracker, soft_limit_s: float) -> None:
        super().__init__(name=f"heartbeat-{claim.job_id}", daemon=True)
        self.runner = runner
        self.claim = claim
        self.tracker = tracker
        self.soft_limit_s = soft_limit_s
        self.started = time.monotonic()
        self.stop_reason: StopReason | None = None
        self.marks_sent = 0  # tracker.marks[:marks_sent] are recorded as job events
        # held while stage marks are written (a beat, or the final write), so none is recorded twice
        self.marks_lock = threading.Lock()
        self._halt = threading.Event()

    def unsent_marks(self) -> list[StageMark]:
        return self.tracker.marks[self.marks_sent :]

    def beat(self) -> None:
        stage, percent, timings = self.tracker.snapshot()
        with self.marks_lock:
            marks = self.unsent_marks()
            try:
                with self.runner.db.session() as session:
                    cancel = lifecycle.heartbeat(
                        session, self.claim, self.runner.settings.lease_seconds, stage, percent, timings, marks
                    )
            except Exception as exc:  # a transient DB error must not kill the job; the lease has slack
                log.warning("heartbeat for job %s failed: %s", self.claim.job_id, exc)
                return
            if cancel is not None:
                self.marks_sent += len(marks)
        if cancel is None:
            self.stop_reason = self.stop_reason or StopReason.fenced
        elif cancel:
            self.stop_reason = self.stop_reason or StopReason.cancelled
        if time.monotonic() - self.started > self.soft_limit_s:
            self.stop_reason = self.stop_reason or StopReason.timeout

    def run(self) -> None:
        while not self._halt.wait(self.runner.settings.heartbeat_s):
            self.beat()

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        store: ArtifactStore | None = None,
        worker_id: str | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.settings = settings
        self.db = db or Database(settings)
        self.store = store or make_store(settings)
        self.worker_id = worker_id or default_worker_id()
        self.capacity = capacity  # what this worker advertises: the budgets a job sets are capped at it
        self.interrupted = False  # the supervisor saw a cancel
        self._interruptible = False  # the main thread runs the pipeline or the upload: Interrupted may be raised

    def interrupt(self) -> None:
        """The supervisor saw the job's cancel (`run_one`'s signal handler calls this in the main thread): raise
        Interrupted there if it runs the pipeline or the upload; otherwise the run stops at its next check."""
        self.interrupted = True
        if self._interruptible:
            self._interruptible = False
            raise Interrupted

    @contextmanager
    def _interruptible_section(self) -> Iterator[None]:
        self._interruptible = not self.interrupted
        if self.interrupted:
            raise Interrupted
        try:
            yield
        finally:
            self._interruptible = False

    def run(self, job_id: str, *, delivery: Delivery | None = None) -> str:
        """Run the job if it can be claimed (with `delivery`: only while it is routed to the queue its message came
        from); returns the final state, or "skipped"/"fenced"."""
        try:
            with self.db.session() as session:
                claim = lifecycle.claim(
                    session, job_id, self.worker_id, self.settings.lease_seconds, self.settings.job_time_limit_s,
                    delivery,
                )
        except SQLAlchemyError as exc:  # the job is still queued: the caller must keep its message
            raise ClaimUnavailable(f"could not claim job {job_id}: {type(exc).__name__}: {exc}") from exc
        if claim is None:
            log.info("job %s not claimable (not queued, cancelled, taken or re-routed); skipping", job_id)
            return "skipped"
        log.info("job %s attempt %d started on %s", job_id, claim.attempt, self.worker_id)
        work = self.settings.scratch_root / job_id / f"attempt-{claim.attempt}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "out").mkdir(parents=True)
        try:
            state = self._run_claimed(claim, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if claim.parent_id is not None and not self.interrupted:
            self._write_sweep_comparison(claim.parent_id)
        return state

    def _write_sweep_comparison(self, parent_id: str) -> None:
        """The sweep's comparison, if this cell was its last to end (otherwise nothing happens). A failure is left to
        the reaper, which writes the comparisons nobody wrote."""
        from worker.sweeps import write_comparison_if_ready

        try:
            state = write_comparison_if_ready(self.db, self.store, self.settings, parent_id, self.worker_id)
        except Exception:
            log.exception("writing the comparison of sweep %s failed here (the reaper will)", parent_id)
            return
        if state is not None:
            log.info("sweep %s -> %s", parent_id, state)

    def _run_claimed(self, claim: Claim, work: Path) -> str:
        from twossp_core.errors import Cancelled, TwosspError

        soft_limit = min(self.settings.job_soft_time_limit_s, claim.time_limit_s)
        # the stored spec is validated here once, into the typed request every step below is handed; one that no
        # longer parses fails the run with the reason once the run has started
        spec: PruneSpec | SweepSpec | None = None
        invalid: TwosspError | None = None
        try:
            spec = parse_job_spec(claim.kind, claim.spec)
        except TwosspError as exc:
            invalid = exc
        tracker = ProgressTracker(job_stages(spec) if spec is not None else [])
        heartbeat = Heartbeat(self, claim, tracker, soft_limit)
        heartbeat.start()

        def should_cancel() -> bool:
            return heartbeat.stop_reason is not None or self.interrupted

        def finish(state: JobState, error: str | None = None, *, final_stage: str | None = None, **values: Any) -> str:
            """Record the terminal state; the stage stays where the run stopped unless final_stage says otherwise."""
            tracker.finish()
            stage, _, timings = tracker.snapshot()
            stage = final_stage or stage

            def write(session: Session) -> bool:
                with heartbeat.marks_lock:  # the heartbeat still runs (it keeps the lease while this retries)
                    return lifecycle.finish(
                        session, claim, state, error=error, marks=heartbeat.unsent_marks(), stage=stage,
                        stage_timings=timings, **values
                    )

            try:
                done = self._record(write)
            finally:
                heartbeat.halt()
            if not done:
                log.warning("job %s attempt %d: not recorded as %s (fenced out)", claim.job_id, claim.attempt, state)
                return StopReason.fenced
            log.info("job %s attempt %d -> %s %s", claim.job_id, claim.attempt, state.value, error or "")
            return state.value

        def timeout_message() -> str:
            return f"timeout: the job exceeded its time limit of {soft_limit:g} s"

        previous_cwd = os.getcwd()
        os.chdir(work)  # hub ids must never resolve against whatever directory the worker started in
        try:
            if spec is None:
                assert invalid is not None
                raise invalid
            # the API checked the paths at submission; the files may have changed since: open them now (and the
            # zero-shot tasks' files, from this worker's task data), check what was opened, and hand the job a spec
            # that reads exactly those files (its names unchanged)
            spec = spec.with_task_data(TaskData(root=self.settings.task_data))
            with (
                pinned_inputs(spec, self.settings.resolved_roots(), work / "inputs") as inputs,
                self._interruptible_section(),
            ):
                report = self._execute(inputs.job_spec(spec), work / "out", tracker.update, should_cancel,
                                       sweep_id=claim.parent_id, job_id=claim.job_id)
            if should_cancel():
                raise Cancelled("stopped after the last stage")
            tracker.update("upload", 0.0)
            with self._interruptible_section():
                artifact = self.store.upload_dir(work / "out", claim.job_id, claim.attempt)
            tracker.update("upload", 1.0)
            if heartbeat.stop_reason == StopReason.fenced:
                heartbeat.halt()
                return StopReason.fenced
            # the manifest exists now; succeed unless a cancel arrived meanwhile
            state = finish(
                JobState.succeeded, final_stage=DONE_STAGE, require_no_cancel=True, progress=100.0, report=report,
                artifact=artifact,
            )
            if state == StopReason.fenced:
                return finish(JobState.cancelled, "cancelled by user")
            return state
        except (Cancelled, Interrupted):
            reason = heartbeat.stop_reason
            if reason == StopReason.timeout and not self.interrupted:
                return finish(JobState.failed, timeout_message())
            if reason == StopReason.fenced:
                heartbeat.halt()
                return StopReason.fenced
            return finish(JobState.cancelled, lifecycle.CANCELLED_BY_USER)
        except Exception as exc:
            if self.interrupted:  # the interrupt surfaced as another error (a handler on its way wrapped it)
                return finish(JobState.cancelled, lifecycle.CANCELLED_BY_USER)
            if isinstance(exc, PathRefused):
                return finish(JobState.failed, f"refused: {exc}")
            if isinstance(exc, TwosspError):
                return finish(JobState.failed, f"{type(exc).__name__}: {exc}")
            log.error("job %s failed:\n%s", claim.job_id, traceback.format_exc())
            return finish(JobState.failed, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            os.chdir(previous_cwd)
            heartbeat.halt()

    def _record(self, write: Callable[[Session], bool]) -> bool:
        """Write a finished run's outcome, retrying database errors for `record_retry_s` (the heartbeat keeps
        the lease alive meanwhile), so a database blip does not throw the finished run away."""
        deadline = time.monotonic() + self.settings.record_retry_s
        delay = 0.5
        while True:
            try:
                with self.db.session() as session:
                    return write(session)
            except SQLAlchemyError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("recording the outcome failed (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _execute(
        self,
        spec: PruneSpec | SweepSpec,
        out_dir: Path,
        progress: Callable[[str, float], None],
        should_cancel: Callable[[], bool],
        sweep_id: str | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """Run the job's pipeline (its parsed spec) into out_dir; returns the job's report. `sweep_id`: the job is a
        cell of that sweep, which reads the dense work from the store (or computes and stores it: worker/shared.py)."""
        if self.settings.torch_threads:
            import torch  # torch is imported only here, in the process running the job

            torch.set_num_threads(self.settings.torch_threads)
        from twossp_core.pipeline import REPORT_FILE, run_prune, write_json_atomic
        from twossp_core.sweep import SWEEP_JSON, run_sweep, run_sweep_cell

        spec, caps = self.capped(spec)
        if sweep_id is not None:  # a sweep's cell
            assert isinstance(spec, PruneSpec)
            from worker.shared import StoreArtifactCache

            shared = StoreArtifactCache(self.store, self.db, self.settings.resolved_data_dir / "locks", job_id)
            result = run_sweep_cell(spec, out_dir, save_model=self._saves_models(sweep_id), progress=progress,
                                    should_cancel=should_cancel, shared=shared)
            if caps:
                result["sweep"]["capped_by_worker"] = caps
            return result
        if isinstance(spec, SweepSpec):
            summary = run_sweep(spec, out_dir, progress=progress, should_cancel=should_cancel)
            if caps:
                summary["capped_by_worker"] = caps
                write_json_atomic(out_dir / SWEEP_JSON, summary)
            # the request is the job's spec and the files are in the manifest; the rest is the comparison
            return {k: v for k, v in summary.items() if k not in ("spec", "files")}
        report = run_prune(spec, out_dir, progress=progress, should_cancel=should_cancel)
        if caps:
            report["memory"]["capped_by_worker"] = caps
            write_json_atomic(out_dir / REPORT_FILE, report)
        return report

    def _saves_models(self, sweep_id: str) -> bool:
        """Whether the cell's sweep exports every pruned model (`save_models`)."""
        from sqlalchemy import select

        from service.db.models import Job

        with self.db.session() as session:
            spec = session.scalar(select(Job.spec).where(Job.id == sweep_id))
        return bool((spec or {}).get("save_models"))

    def capped(self, spec: Any) -> tuple[Any, dict[str, dict[str, int]]]:
        """The spec with the budgets it sets above this worker's memory lowered to that memory, and what was
        lowered (`{field: {"asked", "capped_to"}}`, kept in the report's `memory`)."""
        if self.capacity is None:
            return spec, {}
        from service.routing import capped_budgets

        own = self.capacity.worker_class(self.settings.worker_queue or self.settings.celery_queue)
        lowered = capped_budgets(spec, own)
        if not lowered:
            return spec, {}
        caps = {name: {"asked": getattr(spec, name), "capped_to": size} for name, size in lowered.items()}
        log.info("budgets above this worker's memory capped: %s", caps)
        return spec.model_copy(update=lowered), caps
